"""Throughput metrics (protclip.train.meter): model FLOPs count real tokens only, so a batch padded or packed costs
the same; the meter's tokens/s are unpadded, its padded tokens/s count every computed slot, and MFU appears only
where the device's peak is known. Expectations are derived from the collated batch's own masks and lengths.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from protclip.data.collate import pack_batch
from protclip.train.flops import pass_flops, peak_flops, tower_shape
from protclip.train.meter import StepMeter, step_flops_fn
from tests.helpers.model import pad_columns, row_batch, short_rows, tiny
from tests.helpers.tolerance import approx_rounding

CPU = torch.device("cpu")


def _setup(mode: str = "paper"):
    """A tiny model, its FLOPs function and a padded batch of real rows of mixed lengths (protein, text and
    sub-text padding all present)."""
    model, loss_fn, col = tiny(mode)
    flops_of = step_flops_fn(model, SimpleNamespace(model=model.cfg, loss=loss_fn.cfg))
    padded = col(short_rows(3) + row_batch(2), seed=0)
    return model, flops_of, padded


def _lengths(mask: torch.Tensor) -> list[int]:
    return mask.sum(-1).reshape(-1).tolist()


def test_step_flops_count_real_tokens_whatever_the_layout():
    model, flops_of, padded = _setup("paper")
    plen = _lengths(padded["protein_attention_mask"])
    assert len(set(plen)) > 1  # rows of different lengths: the padded layout has padding to ignore
    # paper mode, all four objectives, frozen text tower: clean/MLM/span protein passes with grad, the full text
    # and the 4 sub-texts per pair without
    p, t = tower_shape(model.protein_tower), tower_shape(model.text_tower)
    assert model.cfg.freeze_text
    want = (3 * pass_flops(p, plen, with_grad=True)
            + pass_flops(t, _lengths(padded["text_attention_mask"]), with_grad=False)
            + pass_flops(t, _lengths(padded["subtext_attention_mask"]), with_grad=False))  # fmt: skip
    got_padded = flops_of([padded])
    assert got_padded == approx_rounding(want)
    assert flops_of([pack_batch(padded)]) == approx_rounding(got_padded)
    # more padding columns change nothing; two micro-batches cost the sum of each
    assert flops_of([pad_columns(padded, protein=7, text=5, subtext=3)]) == approx_rounding(got_padded)
    first, second = ({k: v[s] for k, v in padded.items()} for s in (slice(0, 3), slice(3, None)))
    split = flops_of([pack_batch(first), second])
    assert split == approx_rounding(got_padded)


def test_released_mode_runs_the_span_pass_without_grad():
    model, flops_of, padded = _setup("released")
    plen = _lengths(padded["protein_attention_mask"])
    p = tower_shape(model.protein_tower)
    paper_model, paper_flops, _ = _setup("paper")
    # same towers and batch: released differs from paper only by its span pass (no grad: a third of the cost)
    diff = paper_flops([padded]) - flops_of([padded])
    assert diff == approx_rounding(pass_flops(p, plen, with_grad=True) - pass_flops(p, plen, with_grad=False))
    assert tower_shape(paper_model.protein_tower) == p


def _meter(batch: dict, flops: float, peak: float | None = None, t_step: float = 2.0, t_data: float = 0.5):
    meter = StepMeter(peak=peak, world=1)
    meter.update([batch], t_step=t_step, t_data=t_data, flops=flops)
    return meter.metrics(CPU)


def test_meter_on_a_padded_batch_reports_its_padding():
    _, flops_of, padded = _setup()
    pm, tm = padded["protein_attention_mask"], padded["text_attention_mask"]
    real = float(pm.sum() + tm.sum())
    slots = float(pm.numel() + tm.numel())
    assert slots > real
    m = _meter(padded, flops_of([padded]))
    assert m["perf/tokens_per_s"] == approx_rounding(real / 2.0)
    assert m["perf/tokens_per_s_per_device"] == approx_rounding(real / 2.0)
    assert m["perf/padded_tokens_per_s"] == approx_rounding(slots / 2.0)
    assert m["perf/padded_tokens_per_s"] > m["perf/tokens_per_s"]
    assert m["perf/padding_share"] == approx_rounding(1.0 - real / slots)
    assert m["perf/pairs_per_s"] == approx_rounding(pm.shape[0] / 2.0)
    assert m["perf/step_time_s"] == approx_rounding(2.0)
    assert m["perf/data_wait_share"] == approx_rounding(0.25)


def test_meter_on_the_same_rows_packed_reports_no_padding():
    _, flops_of, padded = _setup()
    packed = pack_batch(padded)
    m_pad = _meter(padded, flops_of([padded]))
    m = _meter(packed, flops_of([packed]))
    # the same real tokens and pairs in the same time: the unpadded numbers agree across layouts
    assert m["perf/tokens_per_s"] == approx_rounding(m_pad["perf/tokens_per_s"])
    assert m["perf/pairs_per_s"] == approx_rounding(m_pad["perf/pairs_per_s"])
    assert m["perf/padded_tokens_per_s"] == approx_rounding(m["perf/tokens_per_s"])
    assert m["perf/padding_share"] == 0.0


def test_mfu_only_where_the_peak_is_known():
    _, flops_of, padded = _setup()
    flops = flops_of([padded])
    assert peak_flops(CPU) is None
    m = _meter(padded, flops, peak=peak_flops(CPU))
    assert m["perf/mfu"] is None and "perf/max_memory_gib" not in m  # CPU: no peak, no CUDA allocator
    peak = peak_flops(name="NVIDIA H100 80GB HBM3")
    assert peak is not None
    m = _meter(padded, flops, peak=peak, t_step=3.0)
    assert m["perf/mfu"] == approx_rounding(flops / (3.0 * peak))
    assert 0.0 < m["perf/mfu"] < 1.0


def test_meter_sums_steps_between_logs_and_resets():
    _, flops_of, padded = _setup()
    packed = pack_batch(padded)
    meter = StepMeter(peak=None, world=1)
    meter.update([padded], t_step=1.0, t_data=0.1, flops=flops_of([padded]))
    meter.update([packed, packed], t_step=3.0, t_data=0.3, flops=flops_of([packed, packed]))
    m = meter.metrics(CPU)
    pm, tm = padded["protein_attention_mask"], padded["text_attention_mask"]
    real, slots = float(pm.sum() + tm.sum()), float(pm.numel() + tm.numel())
    assert m["perf/step_time_s"] == approx_rounding(2.0)  # 4 s over 2 steps
    assert m["perf/tokens_per_s"] == approx_rounding(3 * real / 4.0)
    assert m["perf/padded_tokens_per_s"] == approx_rounding((slots + 2 * real) / 4.0)
    assert m["perf/padding_share"] == approx_rounding(1.0 - 3 * real / (slots + 2 * real))
    assert m["perf/pairs_per_s"] == approx_rounding(3 * pm.shape[0] / 4.0)
    assert meter.metrics(CPU) == {}  # counters reset after each log


def _two_rank_meter(rank: int, world: int) -> dict:
    """Each rank packs a different number of real rows and takes a different time; the meter all-reduces."""
    _, _, col = tiny("paper")
    rows = short_rows(3) + row_batch(2)
    batch = pack_batch(col(rows[: 2 + 3 * rank], seed=rank))  # rank 0: 2 pairs, rank 1: 5 pairs
    meter = StepMeter(peak=None, world=world)
    meter.update([batch], t_step=2.0 + rank, t_data=0.5, flops=1.0)
    real = float(batch["protein_attention_mask"].sum() + batch["text_attention_mask"].sum())
    return {"metrics": meter.metrics(CPU), "real": real, "rows": 2 + 3 * rank}


def test_meter_over_two_ranks_reports_global_unpadded_throughput():
    """On 2 gloo ranks with unequal packed micro-batches: tokens/s and pairs/s are global (sums over ranks over
    the mean step time), tokens/s per device is that over the world size, and every rank logs the same numbers."""
    from tests.helpers.train import run_gloo

    outs = run_gloo(_two_rank_meter, 2)
    wall = (2.0 + 3.0) / 2  # mean step time of the two ranks
    real, rows = sum(o["real"] for o in outs), sum(o["rows"] for o in outs)
    for o in outs:
        m = o["metrics"]
        assert m["perf/step_time_s"] == approx_rounding(wall)
        assert m["perf/tokens_per_s"] == approx_rounding(real / wall)
        assert m["perf/tokens_per_s_per_device"] == approx_rounding(real / wall / 2)
        assert m["perf/pairs_per_s"] == approx_rounding(rows / wall)
        assert m["perf/padding_share"] == 0.0 and m["perf/data_wait_share"] == approx_rounding(1.0 / 5.0)
    assert outs[0]["metrics"] == outs[1]["metrics"]
