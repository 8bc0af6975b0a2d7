"""Gradient cache + accumulation over packed micro-batches holding different numbers of pairs.

Two packed micro-batches of 3 and 2 real rows must give the step of one packed micro-batch of the same 5 rows:
loss terms and gradients (GC over the whole accumulated batch through the feature cache, per-sample terms by
their shares). Eval mode, so both runs see the same (noise-free) passes; fp32 with the rounding budget of a
forward + backward, scaled by the largest gradient entry.
"""

from __future__ import annotations

import torch

from protclip.data.collate import pack_batch
from protclip.train.step import forward_backward
from tests.helpers.model import row_batch, short_rows, tiny
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding

TERMS = ("loss", "loss_gc", "loss_mlm", "loss_bsr", "loss_pda")


def _step(model, loss_fn, mbs):
    model.zero_grad(set_to_none=True)
    terms = forward_backward(model, loss_fn, mbs)
    return terms, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulating_packed_micro_batches_of_different_sizes_equals_one_batch():
    model, loss_fn, col = tiny("paper")
    model.eval()
    rows = short_rows(3) + row_batch(2)
    whole = col(rows, seed=0)
    # the same masks and spans, split 3 + 2: slice the padded batch's rows, then pack each part
    first = {k: v[:3] for k, v in whole.items()}
    second = {k: v[3:] for k, v in whole.items()}
    one, g_one = _step(model, loss_fn, [pack_batch(whole)])
    two, g_two = _step(model, loss_fn, [pack_batch(first), pack_batch(second)])
    assert one.rows == two.rows == 5
    for k in TERMS:
        assert_close_rounding(torch.tensor(two.values[k]), torch.tensor(one.values[k]), ULPS_NETWORK,
                              dtype=torch.float32, msg=k)
    scale = max(float(g.abs().max()) for g in g_one.values())
    assert set(g_one) == set(g_two)
    for name, g in g_one.items():
        assert_close_rounding(g_two[name], g, ULPS_NETWORK, scale=scale, msg=f"grad {name}")


def test_validation_on_packed_micro_batches_equals_padded():
    """Validation counts pairs (not packed rows) and cuts texts at their boundaries for the retrieval keys, so
    packed micro-batches give the padded batches' metrics (paper mode is padding-invariant)."""
    from protclip.train.validate import validate

    model, loss_fn, col = tiny("paper")
    rows = short_rows(3) + row_batch(2)
    rows[4]["text"] = rows[0]["text"]  # two rows with one text: both count as positives for each other
    whole = col(rows, seed=0)
    parts = [{k: v[:3] for k, v in whole.items()}, {k: v[3:] for k, v in whole.items()}]
    padded = validate(model, loss_fn, iter(parts), torch.device("cpu"))
    packed = validate(model, loss_fn, iter([pack_batch(p) for p in parts]), torch.device("cpu"))
    assert padded["val/rows"] == packed["val/rows"] == 5
    assert set(padded) == set(packed) and any(k.startswith("val/p2t_") for k in packed)
    for k, v in padded.items():
        assert_close_rounding(torch.tensor(packed[k]), torch.tensor(v), ULPS_NETWORK, dtype=torch.float32, msg=k)
