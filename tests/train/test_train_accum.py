"""Gradient accumulation with the feature cache.

Eval mode (no randomness): the accumulated step equals the un-accumulated one (loss, gradients, parameters),
single-process and on 2 FSDP2 gloo ranks. Train mode (dropout in both towers, Gumbel noise in the PDA prototypes):
each micro-batch and each model pass gets noise of its own that depends only on the step's RNG state and the
micro-batch's index, the cache pass sees the same noise as the grad pass, and the accumulated gradients equal the
full-batch gradients under that per-micro-batch noise.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from protclip.data.masking import IGNORE_INDEX
from protclip.model.config import RandomTowerConfig
from protclip.model.losses.contrastive import global_contrastive_loss
from protclip.model.losses.total import loss_weights
from protclip.model.protclip import seeded_passes
from protclip.train.step import draw_step_seed, forward_backward, micro_batch_seed
from tests.helpers.tolerance import ULPS_NETWORK, ULPS_REDUCTION, assert_close_rounding
from tests.helpers.train import full_grads, run_gloo, split_batch, synthetic_rows, tiny_setup


def _params(model) -> dict[str, torch.Tensor]:
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def _max_abs(tensors: dict[str, torch.Tensor]) -> float:
    return max(float(t.abs().max()) for t in tensors.values())


def _assert_same_grads(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], what: str):
    """Gradients of one forward + backward computed in another order (other matmul shapes, micro-batches, shards):
    every entry to ``ULPS_NETWORK`` of the largest gradient, since an entry that is mathematically ~0 (e.g. the
    BSR key bias, which softmax ignores) is a sum of much larger terms and carries their rounding."""
    assert got.keys() == ref.keys(), set(got) ^ set(ref)
    scale = _max_abs(ref)
    for name in ref:
        assert_close_rounding(got[name], ref[name], ulps=ULPS_NETWORK, scale=scale, msg=f"{what} {name}")


def _assert_same_value(got: float, ref: float, ulps: float, what: str):
    assert_close_rounding(torch.tensor(got), torch.tensor(ref), ulps=ulps, dtype=torch.float32, msg=what)


# ------------------------------------------------------------------------------------------ eval mode


LR = 1e-3


def _one_step(accum: int, batch):
    """One step with plain SGD, whose update is linear in the gradient, so parameter differences are bounded by
    ``LR`` times the gradient's (Adam's ``g / (|g| + eps)`` would blow up the rounding of ~0 gradient entries)."""
    model, loss_fn, _ = tiny_setup(seed=0)
    model.eval()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    res = forward_backward(model, loss_fn, split_batch(batch, accum))
    grads = full_grads(model)
    opt.step()
    return res.values, grads, _params(model)


def test_accumulation_equals_full_batch_single_process():
    _, _, collator = tiny_setup(seed=0)
    batch = collator(synthetic_rows(8, seed=1))
    ref_vals, ref_grads, ref_params = _one_step(1, batch)
    for accum in (2, 4):
        vals, grads, params = _one_step(accum, batch)
        for k in ("loss", "loss_gc", "loss_mlm", "loss_bsr", "loss_pda"):
            _assert_same_value(vals[k], ref_vals[k], ULPS_NETWORK, f"accum {accum} {k}")
        _assert_same_grads(grads, ref_grads, f"accum {accum} grad")
        step_scale = LR * _max_abs(ref_grads)
        for name in ref_params:  # p - LR * g: the gradient's budget scaled by LR, plus the parameter's rounding
            scale = float(ref_params[name].abs().max()) + step_scale
            assert_close_rounding(params[name], ref_params[name], ULPS_NETWORK, scale=scale, msg=f"param {name}")


def _reference_unsharded(batch, halves: int):
    """Single process: GC over all rows + per-sample terms averaged over the per-rank halves (what FSDP's
    gradient averaging of per-rank means computes)."""
    model, loss_fn, _ = tiny_setup(seed=0)
    model.eval()
    w = loss_weights(loss_fn.cfg)
    full = loss_fn(model(batch))
    total = w["loss_gc"] * full["loss_gc"]
    parts = [loss_fn(model(mb)) for mb in split_batch(batch, halves)]
    for k in w:
        if k != "loss_gc":
            total = total + w[k] * sum(p[k] for p in parts) / halves
    total.backward()
    return float(total.detach()), full_grads(model)


def _fsdp_worker(rank: int, world: int, batch, accum: int):
    from protclip.train.parallelize import parallelize

    model, loss_fn, _ = tiny_setup(seed=0)
    model.eval()
    parallelize(model, device_type="cpu")
    local = split_batch(batch, world)[rank]
    res = forward_backward(model, loss_fn, split_batch(local, accum))
    loss = torch.tensor([res.values["loss"]])
    torch.distributed.all_reduce(loss)
    return float(loss) / world, full_grads(model)


def test_fsdp2_two_ranks_match_unsharded_with_and_without_accumulation():
    _, _, collator = tiny_setup(seed=0)
    batch = collator(synthetic_rows(8, seed=2))
    ref_loss, ref_grads = _reference_unsharded(batch, halves=2)
    for accum in (1, 2):
        results = run_gloo(_fsdp_worker, 2, batch, accum)
        loss, grads = results[0]
        _assert_same_value(loss, ref_loss, ULPS_NETWORK, f"accum {accum} loss")
        _assert_same_grads(grads, ref_grads, f"accum {accum} grad")


# ------------------------------------------------------------------------------------------ train mode


def _train_setup(dropout: float = 0.1):
    """Tiny model in train mode: dropout ``dropout`` in both towers (text tower trainable, so it is in train mode
    and its passes draw masks too) and Gumbel noise in the prototypes."""
    geom = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    model, loss_fn, collator = tiny_setup(
        seed=0, freeze_text=False,
        protein_random=RandomTowerConfig(**geom, dropout=dropout),
        text_random=RandomTowerConfig(**geom, max_positions=512, dropout=dropout),
    )  # fmt: skip
    model.train()
    return model, loss_fn, collator


@contextlib.contextmanager
def _record(model):
    """Record the cache pass's features (``encode_*``), the grad passes' outputs, and the dropout mask of the
    protein tower's first attention-output dropout at each protein-tower call (cache and grad passes, in order)."""
    rec = {"cache_p": [], "cache_t": [], "out": [], "masks": []}
    enc_p, enc_t = model.encode_protein, model.encode_text

    def cache_p(*a, **k):
        r = enc_p(*a, **k)
        rec["cache_p"].append(r.detach().clone())
        return r

    def cache_t(*a, **k):
        r = enc_t(*a, **k)
        rec["cache_t"].append(r.detach().clone())
        return r

    def on_out(_m, _i, out):
        rec["out"].append({k: out[k].detach().clone() for k in ("protein_features", "text_features", "pda_queries")})

    def on_dropout(_m, inp, out):
        rec["masks"].append(((out == 0) & (inp[0] != 0)).detach().clone())

    dropout = model.protein_tower.encoder.layer[0].attention.output.dropout
    hooks = [model.register_forward_hook(on_out), dropout.register_forward_hook(on_dropout)]
    model.encode_protein, model.encode_text = cache_p, cache_t
    try:
        yield rec
    finally:
        for h in hooks:
            h.remove()
        del model.encode_protein, model.encode_text


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_micro_batches_and_passes_get_their_own_noise(dropout):
    """Two micro-batches holding the same rows: their Gumbel noise (PDA queries) and, with dropout, the masks of
    every protein pass (clean, MLM, span) of both micro-batches all differ, while each cache pass repeats the
    masks of its micro-batch's clean pass. (Replaying one saved RNG state per micro-batch gives both micro-batches
    the same Gumbel noise, and with dropout makes micro-batch 0's MLM pass reuse micro-batch 1's clean masks.)"""
    model, loss_fn, collator = _train_setup(dropout)
    batch = collator(synthetic_rows(4, seed=1))
    torch.manual_seed(5)
    with _record(model) as rec:
        forward_backward(model, loss_fn, [batch, batch])
    q0, q1 = rec["out"][0]["pda_queries"], rec["out"][1]["pda_queries"]
    assert not torch.allclose(q0, q1), "both micro-batches got the same Gumbel noise"
    if dropout == 0.0:
        assert torch.equal(rec["out"][0]["protein_features"], rec["out"][1]["protein_features"])
        return
    masks = rec["masks"]
    assert len(masks) == 2 + 2 * 3, len(masks)  # cache: clean x 2; grad: (clean, MLM, span) x 2
    cache, grad = masks[:2], masks[2:]
    assert all(m.any() for m in masks), "dropout drew no mask"
    assert torch.equal(cache[0], grad[0]) and torch.equal(cache[1], grad[3]), "cache and grad pass masks differ"
    for i in range(len(grad)):
        for j in range(i):
            assert not torch.equal(grad[i], grad[j]), f"protein passes {j} and {i} of the step share dropout masks"


def test_micro_batch_noise_depends_only_on_step_state_and_index():
    """A micro-batch's noise is the same whatever the other micro-batches of the step are (their count, rows and
    padded lengths), and the global RNG after a step is the one before it advanced by the step's single draw."""
    model, loss_fn, collator = _train_setup()
    x, y = collator(synthetic_rows(4, seed=1)), collator(synthetic_rows(4, seed=2))
    w = collator(synthetic_rows(4, seed=3, min_len=70, max_len=90))  # another padded length than x
    assert w["protein_input_ids"].shape[1] != x["protein_input_ids"].shape[1]
    torch.manual_seed(11)
    start = torch.get_rng_state()
    draw_step_seed()
    after = torch.get_rng_state()

    def run(mbs):
        torch.set_rng_state(start)
        with _record(model) as rec:
            forward_backward(model, loss_fn, mbs)
        assert torch.equal(torch.get_rng_state(), after), "the step left another RNG state"
        return rec["out"]

    alone, xy, wy, xyx = run([x]), run([x, y]), run([w, y]), run([x, y, x])
    for k in alone[0]:
        assert torch.equal(alone[0][k], xy[0][k]) and torch.equal(alone[0][k], xyx[0][k]), f"micro-batch 0 {k}"
        assert torch.equal(xy[1][k], wy[1][k]) and torch.equal(xy[1][k], xyx[1][k]), f"micro-batch 1 {k}"
    assert not torch.allclose(xyx[0]["pda_queries"], xyx[2]["pda_queries"])  # same rows, other index


def test_cache_features_equal_live_features_in_train_mode():
    """GradCache correctness under dropout: the no-grad cache pass computes the very features the grad pass
    produces for the same micro-batch (same masks), which are not the dropout-free ones."""
    model, loss_fn, collator = _train_setup()
    batch = collator(synthetic_rows(8, seed=1))
    torch.manual_seed(5)
    with _record(model) as rec:
        forward_backward(model, loss_fn, split_batch(batch, 2))
    for a in range(2):
        live = rec["out"][a]
        assert_close_rounding(rec["cache_p"][a], live["protein_features"], ULPS_REDUCTION, msg=f"protein {a}")
        assert_close_rounding(rec["cache_t"][a], live["text_features"], ULPS_REDUCTION, msg=f"text {a}")
    model.eval()
    with torch.no_grad():
        clean = model.encode_protein(batch["protein_input_ids"][:4], batch["protein_attention_mask"][:4])
    assert not torch.allclose(clean, rec["cache_p"][0], atol=1e-4), "dropout had no effect on the features"


def _reference_step(model, loss_fn, mbs, rng_state: torch.Tensor):
    """Full-batch loss without a cache: micro-batch ``a`` runs once, with grad, under the noise the step defines
    for it (``micro_batch_seed(step seed, a)``); GC over all rows, per-sample terms as means over all rows/tokens."""
    torch.set_rng_state(rng_state)
    step_seed = draw_step_seed()
    outs = []
    for a, mb in enumerate(mbs):
        with seeded_passes(micro_batch_seed(step_seed, a)):
            outs.append(model(mb))
    w = loss_weights(loss_fn.cfg)
    protein = torch.cat([o["protein_features"] for o in outs])
    text = torch.cat([o["text_features"] for o in outs])
    total = w["loss_gc"] * global_contrastive_loss(protein, text, outs[0]["logit_scale"])["loss_gc"]
    parts = [loss_fn(o) for o in outs]
    counts = {
        "loss_mlm": [float((mb["mlm_labels"] != IGNORE_INDEX).sum()) for mb in mbs],
        "loss_bsr": [float((mb["span_labels"] != IGNORE_INDEX).sum()) for mb in mbs],
        "loss_pda": [float(mb["protein_input_ids"].shape[0]) for mb in mbs],
    }  # fmt: skip
    for k, c in counts.items():
        total = total + w[k] * sum(ci / sum(c) * p[k] for ci, p in zip(c, parts, strict=True))
    total.backward()
    return float(total.detach()), full_grads(model)


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_train_step_equals_reference_with_per_micro_batch_noise(accum):
    """Train mode with dropout and Gumbel noise: the accumulated step's loss and gradients are those of the
    full-batch loss under each micro-batch's own noise (so the cache is exact and the noise is the defined one)."""
    _, _, collator = _train_setup()
    mbs = split_batch(collator(synthetic_rows(8, seed=1)), accum)
    torch.manual_seed(7)
    state = torch.get_rng_state()

    model, loss_fn, _ = _train_setup()
    torch.set_rng_state(state)
    vals = forward_backward(model, loss_fn, mbs).values
    grads = full_grads(model)

    ref_model, ref_loss_fn, _ = _train_setup()
    ref_loss, ref_grads = _reference_step(ref_model, ref_loss_fn, mbs, state)

    _assert_same_value(vals["loss"], ref_loss, ULPS_NETWORK, "loss")
    _assert_same_grads(grads, ref_grads, "grad")
    # the noise matters: the same step in eval mode has other gradients
    model.zero_grad(set_to_none=True)
    model.eval()
    forward_backward(model, loss_fn, mbs)
    assert any(not torch.allclose(g, ref_grads[n], atol=1e-3) for n, g in full_grads(model).items())
