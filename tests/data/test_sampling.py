"""Property-driven sampling: probabilities, deterministic hashing, keep masks."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from protclip.data.sampling import (
    SamplingConfig,
    expected_keep_table,
    format_keep_table,
    keep_mask,
    keep_probability,
    row_uniform,
    row_uniform_scalar,
    sampling_weight,
)
from tests.helpers.tolerance import approx_rounding

ACCS = np.array([f"A0A{i:07d}" for i in range(200_000)])


def test_config_defaults_and_validation():
    cfg = SamplingConfig()
    assert (
        cfg.mode,
        cfg.coverage_exponent,
        cfg.confidence_exponent,
        cfg.max_pe,
        cfg.min_k,
        cfg.keep_reviewed,
    ) == ("once", 0.5, 3.0, 3, 3, True)
    for bad, msg in [
        ({"mode": "sometimes"}, "sampling.mode"),
        ({"seed": -1}, "sampling.seed"),
        ({"seed": 1.5}, "sampling.seed"),
        ({"coverage_exponent": -0.1}, "coverage_exponent"),
        ({"confidence_exponent": math.nan}, "confidence_exponent"),
        ({"max_pe": 6}, "max_pe"),
        ({"min_k": 0}, "min_k"),
        ({"keep_reviewed": "yes"}, "keep_reviewed"),
    ]:
        with pytest.raises(ValueError, match=msg):
            SamplingConfig(**bad)


def test_keep_probability_table_matches_the_paper():
    t = expected_keep_table()
    assert t[(1, 4)] == 1.0
    assert t[(2, 3)] == approx_rounding(math.sqrt(0.75) / 8)
    assert round(t[(2, 3)], 3) == 0.108
    # printed values: within half a unit of their last digit
    assert t[(1, 3)] == pytest.approx(0.8660254, abs=0.5e-7)
    assert t[(3, 3)] == pytest.approx(0.0320750, abs=0.5e-7)
    assert t[(2, 4)] == approx_rounding(0.125)
    assert t[(3, 4)] == approx_rounding(1 / 27)
    assert all(t[(pe, k)] == 0.0 for pe in (4, 5) for k in range(1, 5))
    assert all(t[(pe, k)] == 0.0 for pe in range(1, 6) for k in (1, 2))
    md = format_keep_table()
    assert "| 2 | 0 | 0 | 0.1083 | 0.125 |" in md
    relaxed = expected_keep_table(SamplingConfig(max_pe=5, min_k=1))
    assert relaxed[(4, 1)] == approx_rounding(0.5 / 64)


def test_sampling_weight_scalar_and_vector():
    cfg = SamplingConfig()
    assert sampling_weight(2, 3, cfg) == approx_rounding(0.75**0.5 / 8)
    w = sampling_weight(np.array([1, 2, 5]), np.array([4, 3, 1]), cfg)
    assert w.shape == (3,) and w[0] == 1.0 and w[2] == approx_rounding(0.5 / 125)
    assert sampling_weight(1, 4, SamplingConfig(coverage_exponent=1.0, confidence_exponent=0.0)) == 1.0


def test_row_uniform_is_deterministic_in_range_and_matches_reference():
    u = row_uniform(ACCS[:5000], seed=7, epoch=2)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert np.array_equal(u, row_uniform(ACCS[:5000], seed=7, epoch=2))
    ref = [row_uniform_scalar(a, 7, 2) for a in ACCS[:300]]
    assert u[:300].tolist() == ref
    mixed = ["P12345", "A0A0A0MSM0", "X", "", "ACCESSION_LONGER_THAN_SIXTEEN_BYTES", "Q9\u00e9"]
    assert row_uniform(mixed, 3, 0).tolist() == [row_uniform_scalar(a, 3, 0) for a in mixed]
    assert abs(u.mean() - 0.5) < 0.02


def test_row_uniform_golden_values():
    """Pinned values: a change here silently changes every ProtAnno subset ever drawn."""
    got = row_uniform(["P12345", "A0A0A0MSM0", "Q8NE62"], seed=0, epoch=0).tolist()
    assert got == [row_uniform_scalar(a, 0, 0) for a in ["P12345", "A0A0A0MSM0", "Q8NE62"]]
    assert [round(x, 12) for x in got] == GOLDEN


GOLDEN = [0.927531789247, 0.479251526885, 0.784269941442]


def test_row_uniform_does_not_depend_on_batching_or_input_type():
    whole = row_uniform(ACCS[:10_000], 1, 5)
    parts = np.concatenate([row_uniform(ACCS[:10_000][i : i + 777], 1, 5) for i in range(0, 10_000, 777)])
    assert np.array_equal(whole, parts)
    shuffled = np.random.default_rng(0).permutation(10_000)
    assert np.array_equal(row_uniform(ACCS[:10_000][shuffled], 1, 5), whole[shuffled])
    sub = ACCS[:1000]
    for variant in (
        list(sub),
        sub.astype(object),
        np.char.encode(sub, "ascii"),
        pa.array(list(sub)),
        pa.chunked_array([list(sub[:400]), list(sub[400:])]),
    ):
        assert np.array_equal(row_uniform(variant, 1, 5), whole[:1000])


def test_row_uniform_is_stable_across_processes():
    code = (
        "import numpy as np; from protclip.data.sampling import row_uniform; "
        "print(repr(row_uniform(['P12345','A0A0A0MSM0','Q8NE62','Z'*40], 11, 4).tolist()))"
    )
    outs = set()
    for hashseed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": hashseed, "PATH": ""},
        ).stdout.strip()
        outs.add(out)
    assert outs == {repr(row_uniform(["P12345", "A0A0A0MSM0", "Q8NE62", "Z" * 40], 11, 4).tolist())}


def test_seed_and_epoch_change_the_draw():
    a = row_uniform(ACCS[:2000], 0, 0)
    assert np.mean(a == row_uniform(ACCS[:2000], 1, 0)) < 0.01
    assert np.mean(a == row_uniform(ACCS[:2000], 0, 1)) < 0.01


def _levels(n: int, pe: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(n, dtype=bool), np.full(n, pe), np.full(n, k)


def test_modes_once_per_epoch_none():
    rev, pe, k = _levels(20_000, 2, 4)
    acc = ACCS[:20_000]
    once = SamplingConfig(mode="once", seed=3)
    assert np.array_equal(
        keep_mask(rev, pe, k, acc, once, epoch=0), keep_mask(rev, pe, k, acc, once, epoch=9)
    )
    per = SamplingConfig(mode="per_epoch", seed=3)
    e0, e1 = keep_mask(rev, pe, k, acc, per, epoch=0), keep_mask(rev, pe, k, acc, per, epoch=1)
    assert np.array_equal(e0, keep_mask(rev, pe, k, acc, once, epoch=5))  # per_epoch epoch 0 == once
    assert not np.array_equal(e0, e1)
    overlap = np.mean(e0 & e1) / np.mean(e0)
    assert overlap == pytest.approx(0.125, abs=0.03)  # independent draws: P(kept again) = p
    assert keep_mask(rev, np.full(20_000, 5), np.full(20_000, 1), acc, SamplingConfig(mode="none")).all()


def test_reviewed_always_kept_unless_disabled():
    n = 5000
    rev = np.ones(n, dtype=bool)
    pe, k = np.full(n, 5), np.full(n, 1)
    assert keep_mask(rev, pe, k, ACCS[:n], SamplingConfig()).all()
    assert not keep_mask(rev, pe, k, ACCS[:n], SamplingConfig(keep_reviewed=False)).any()
    p = keep_probability(np.array([True, False, False]), [5, 1, 4], [1, 4, 4], SamplingConfig())
    assert p.tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("pe, k", [(1, 3), (2, 3), (2, 4), (3, 3), (3, 4)])
def test_realised_keep_rate_matches_probability(pe, k):
    cfg = SamplingConfig(seed=2024)
    rev, pes, ks = _levels(len(ACCS), pe, k)
    rate = keep_mask(rev, pes, ks, ACCS, cfg).mean()
    p = expected_keep_table(cfg)[(pe, k)]
    assert abs(rate - p) < 0.01
    sd = math.sqrt(p * (1 - p) / len(ACCS))
    assert abs(rate - p) < 5 * sd


def test_keep_mask_is_independent_of_batch_split():
    rng = np.random.default_rng(1)
    n = 30_000
    rev = rng.random(n) < 0.1
    pe = rng.integers(1, 6, n)
    k = rng.integers(1, 5, n)
    cfg = SamplingConfig(mode="per_epoch", seed=9)
    whole = keep_mask(rev, pe, k, ACCS[:n], cfg, epoch=4)
    parts = np.concatenate(
        [
            keep_mask(rev[i : i + 1000], pe[i : i + 1000], k[i : i + 1000], ACCS[i : i + 1000], cfg, epoch=4)
            for i in range(0, n, 1000)
        ]
    )
    assert np.array_equal(whole, parts)
    assert whole[rev].all() and not whole[(~rev) & ((pe > 3) | (k < 3))].any()


def test_keep_mask_rejects_bad_input():
    cfg = SamplingConfig()
    with pytest.raises(ValueError, match="column protein_existence has 2 rows, reviewed has 3"):
        keep_mask([False] * 3, [1, 2], [3, 3, 3], ["A", "B", "C"], cfg)
    with pytest.raises(ValueError, match="protein_existence must be in 1..5"):
        keep_mask([False], [0], [3], ["A"], cfg)
    with pytest.raises(ValueError, match="n_properties must be in 1..4"):
        keep_mask([False], [1], [5], ["A"], cfg)
    with pytest.raises(ValueError, match="epoch"):
        keep_mask([False], [1], [3], ["A"], cfg, epoch=-1)
