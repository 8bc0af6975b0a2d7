"""Cropping, MLM masking and BSR span masking (definitions in protclip/data/masking.py)."""

from __future__ import annotations

import numpy as np
import pytest

from protclip.data import masking
from protclip.data.collate import ProtCLIPCollator
from protclip.data.config import tiny_data_config
from protclip.data.tokenizers import (
    ESM_CLS,
    ESM_EOS,
    ESM_MASK,
    ESM_PAD,
    ESM_STANDARD_AA_IDS,
    ProteinTokenizer,
)
from protclip.model.config import LossConfig, collate_config, tiny_model_config
from tests.helpers.model import row_batch


def runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive positions as (start, end_exclusive)."""
    out: list[tuple[int, int]] = []
    for p in np.sort(positions):
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((int(p), int(p) + 1))
    return out


def synthetic_rows(lengths: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return [
        {"accession": f"X{i}", "sequence": "".join(rng.choice(aa, n)), "text": "PROTEIN NAME: X."}
        for i, n in enumerate(lengths)
    ]


# ------------------------------------------------------------------------------------------------ MLM
@pytest.mark.parametrize("n", [1, 2, 6, 7, 33, 100, 128, 1022])
def test_mlm_positions_exact_count(n):
    for seed in range(5):
        pos = masking.mlm_positions(n, 0.15, np.random.default_rng(seed))
        assert len(pos) == masking.mlm_count(n, 0.15) == max(1, int(np.floor(0.15 * n + 0.5)))
        assert len(set(pos.tolist())) == len(pos) and pos.min() >= 0 and pos.max() < n


def test_collated_mlm_exact_share_never_special_or_padding():
    cfg = tiny_model_config()
    col = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=tiny_data_config()), seed=3)
    rows = row_batch(8) + synthetic_rows([1, 3, 9])
    b = col(rows, seed=11)
    ids, am = b["protein_input_ids"].numpy(), b["protein_attention_mask"].numpy()
    mids, lab = b["mlm_input_ids"].numpy(), b["mlm_labels"].numpy()
    for i in range(len(rows)):
        n_res = int(am[i].sum()) - 2
        chosen = lab[i] != -100
        assert chosen.sum() == masking.mlm_count(n_res, 0.15)
        assert not np.isin(ids[i][chosen], [ESM_CLS, ESM_EOS, ESM_PAD]).any()
        assert am[i][chosen].all()
        np.testing.assert_array_equal(lab[i][chosen], ids[i][chosen])
        assert (mids[i][chosen] == ESM_MASK).all()  # released default: 100% <mask>
        np.testing.assert_array_equal(mids[i][~chosen], ids[i][~chosen])


def test_mlm_bert_replacement_80_10_10():
    rng = np.random.default_rng(0)
    ids = np.concatenate([[ESM_CLS], rng.choice(ESM_STANDARD_AA_IDS, 20000), [ESM_EOS]])
    pos = masking.mlm_positions(20000, 0.15, rng) + 1
    masked, labels = masking.apply_mask(ids, pos, ESM_MASK, rng, "bert", ESM_STANDARD_AA_IDS)
    share_mask = (masked[pos] == ESM_MASK).mean()
    kept = (masked[pos] == ids[pos]).mean()
    assert 0.77 < share_mask < 0.83 and 0.08 < kept < 0.13  # kept includes random draws of the same residue
    assert np.isin(masked[pos], np.concatenate([ESM_STANDARD_AA_IDS, [ESM_MASK]])).all()
    np.testing.assert_array_equal(labels[pos], ids[pos])


def test_released_mlm_is_bernoulli():
    cfg = tiny_model_config(mode="released")
    col = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=tiny_data_config()))
    b = col(synthetic_rows([128] * 16), seed=0)
    counts = (b["mlm_labels"] != -100).sum(1).numpy()
    assert len(set(counts.tolist())) > 1  # not a fixed count per sequence
    assert abs(counts.mean() / 128 - 0.15) < 0.04


# ------------------------------------------------------------------------------------------------ BSR spans
@pytest.mark.parametrize("n", [1, 4, 5, 6, 12, 33, 64, 100, 128, 500, 1022])
def test_paper_spans_contiguous_5_to_10_covering_15_percent(n):
    for seed in range(10):
        spans = masking.random_spans(n, 5, 10, 0.15, np.random.default_rng(seed))
        pos = masking.spans_to_positions(spans)
        target = masking.span_target(n, 0.15)
        assert len(set(pos.tolist())) == len(pos), "spans overlap"
        assert target <= len(pos) < target + 10
        # spans are separated by at least one unmasked residue, so each maximal run is exactly one span
        assert runs(pos) == spans
        for a, b in spans:
            assert min(5, n) <= b - a <= 10 and 0 <= a < b <= n


def test_collated_spans_per_sequence_never_special_or_padding():
    cfg = tiny_model_config()
    rows = row_batch(8) + synthetic_rows([2, 7, 20])
    b = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=tiny_data_config()), seed=1)(rows, seed=5)
    ids, am = b["protein_input_ids"].numpy(), b["protein_attention_mask"].numpy()
    sids, lab = b["span_input_ids"].numpy(), b["span_labels"].numpy()
    for i in range(len(rows)):
        n_res = int(am[i].sum()) - 2
        chosen = lab[i] != -100
        assert not np.isin(ids[i][chosen], [ESM_CLS, ESM_EOS, ESM_PAD]).any() and am[i][chosen].all()
        target = masking.span_target(n_res, 0.15)
        assert target <= chosen.sum() < target + 10
        for a, c in runs(np.flatnonzero(chosen)):
            assert min(5, n_res) <= c - a <= 10
        assert (sids[i][chosen] == ESM_MASK).all()
        np.testing.assert_array_equal(lab[i][chosen], ids[i][chosen])


def test_feature_spans_follow_positional_features():
    n, rng = 120, np.random.default_rng(0)
    feats = [
        {"type": "DOMAIN", "start": 21, "end": 28, "note": None},  # 8 residues -> taken whole
        {"type": "ACT_SITE", "start": 60, "end": 60, "note": None},  # 1 residue -> widened to 5 around it
        {"type": "DOMAIN", "start": 80, "end": 119, "note": None},  # 40 residues -> a 5..10 window inside
        {"type": "CHAIN", "start": 1, "end": 120, "note": None},  # not a segment type
        {"type": "SITE", "start": None, "end": 5, "note": None},  # unknown position
    ]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        spans = masking.feature_spans(feats, 0, n, {"DOMAIN", "ACT_SITE"}, 5, 10, 0.5, rng)
        assert (20, 28) in spans
        site = [s for s in spans if s[0] <= 59 < s[1]]
        assert len(site) == 1 and site[0][1] - site[0][0] == 5
        inner = [s for s in spans if 79 <= s[0] and s[1] <= 119 and s[1] - s[0] >= 5]
        assert inner and all(5 <= b - a <= 10 for a, b in inner)
        pos = masking.spans_to_positions(spans)
        assert len(pos) >= masking.span_target(n, 0.5) and runs(pos) == spans  # random spans fill up


def test_feature_spans_shift_with_the_crop_window():
    feats = [
        {"type": "MOTIF", "start": 101, "end": 106, "note": None},
        {"type": "MOTIF", "start": 5, "end": 10},
    ]
    spans = masking.feature_spans(feats, 95, 30, {"MOTIF"}, 5, 10, 0.1, np.random.default_rng(0))
    assert spans == [(5, 11)]  # residues 101..106 (1-based) are 5..10 of a window starting at residue 96


def test_collator_uses_row_features_for_spans():
    cfg, data = tiny_model_config(), tiny_data_config(max_protein_length=102)
    lc = LossConfig(span_source="features", span_feature_types=["DOMAIN"])
    row = synthetic_rows([100])[0] | {"features": [{"type": "DOMAIN", "start": 41, "end": 47, "note": "x"}]}
    b = ProtCLIPCollator(collate_config(cfg, lc, data_cfg=data))([row], seed=0)
    chosen = np.flatnonzero(b["span_labels"][0].numpy() != -100)
    assert (41, 48) in runs(chosen)  # residues 41..47 are tokens 41..47 (token 0 is <cls>)


def test_released_spans_tied_to_batch_padding():
    cfg, data = tiny_model_config(mode="released"), tiny_data_config(max_protein_length=1024)
    col = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=data))
    shares = []
    for seed in range(10):
        b = col(synthetic_rows([10, 1000], seed=seed), seed=seed)
        lab, ids = b["span_labels"].numpy(), b["protein_input_ids"].numpy()
        chosen = lab != -100
        assert not np.isin(ids[chosen], [ESM_CLS, ESM_EOS, ESM_PAD]).any()
        shares.append(chosen[0].sum() / 10)
        assert chosen[1].sum() >= 0.15 * 1000 - 2
    # the short row's spans are drawn over the padded length, so it gets far less than 15% on average
    assert np.mean(shares) < 0.1


def test_released_span_range_drifts_down():
    maskable = np.ones((1, 2000), dtype=bool)
    area = masking.released_fragment_mask(maskable, 10, np.random.default_rng(0))
    lengths = [b - a for a, b in runs(np.flatnonzero(area[0]))]
    assert area[0].sum() >= 300
    assert np.median(lengths) <= 3  # the span range random-walks towards 0 (1-token spans)


# ------------------------------------------------------------------------------------------------ cropping
def test_random_crop_in_paper_training_prefix_in_released_and_eval():
    seq = "".join(np.random.default_rng(0).choice(list("ACDEFGHIKLMNPQRSTVWY"), 500))
    row = {"accession": "LONG", "sequence": seq, "text": "PROTEIN NAME: long."}
    tok = ProteinTokenizer()
    starts = set()
    for mode, train in [("paper", True), ("released", True), ("paper", False)]:
        cfg, data = tiny_model_config(mode=mode), tiny_data_config()
        col = ProtCLIPCollator(collate_config(cfg, LossConfig(), data_cfg=data), train=train)
        for seed in range(8):
            ids = col([row], seed=seed)["protein_input_ids"][0].numpy()
            assert len(ids) == data.max_protein_length and ids[0] == ESM_CLS and ids[-1] == ESM_EOS
            kept = tok.decode(ids)
            assert len(kept) == data.max_residues
            start = seq.find(kept)
            assert start >= 0 and seq[start : start + len(kept)] == kept
            if mode == "paper" and train:
                starts.add(start)
            else:
                assert start == 0
    assert len(starts) > 3  # random windows, not the prefix


def test_crop_start_bounds():
    rng = np.random.default_rng(0)
    assert all(0 <= masking.crop_start(500, 128, rng) <= 372 for _ in range(200))
    assert masking.crop_start(100, 128, rng) == 0 and masking.crop_start(500, 128, None) == 0
