"""Gradient accumulation with the feature cache equals the un-accumulated step (loss, gradients, parameters),
single-process and on 2 FSDP2 gloo ranks. Models run in eval mode so the PDA Gumbel noise is off (the only
randomness of the tiny model; dropout is 0); the RNG replay of the cache pass is tested separately."""

from __future__ import annotations

import torch

from protclip.train.step import forward_backward
from tests.train_helpers import run_gloo, split_batch, synthetic_rows, tiny_setup

ATOL = 2e-5


def _grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name] = g.detach().clone()
    return out


def _params(model) -> dict[str, torch.Tensor]:
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def _one_step(accum: int, batch):
    model, loss_fn, _ = tiny_setup(seed=0)
    model.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    res = forward_backward(model, loss_fn, split_batch(batch, accum))
    grads = _grads(model)
    opt.step()
    return res.values, grads, _params(model)


def test_accumulation_equals_full_batch_single_process():
    _, _, collator = tiny_setup(seed=0)
    batch = collator(synthetic_rows(8, seed=1))
    ref_vals, ref_grads, ref_params = _one_step(1, batch)
    for accum in (2, 4):
        vals, grads, params = _one_step(accum, batch)
        for k in ("loss", "loss_gc", "loss_mlm", "loss_bsr", "loss_pda"):
            assert abs(vals[k] - ref_vals[k]) < ATOL, (accum, k, vals[k], ref_vals[k])
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=1e-4, msg=name)
        for name in ref_params:
            torch.testing.assert_close(params[name], ref_params[name], atol=ATOL, rtol=1e-4, msg=name)


def test_cache_pass_replays_rng_in_train_mode():
    """In train mode (Gumbel noise on) the accumulated step still runs and the GC term is the full-batch one."""
    model, loss_fn, collator = tiny_setup(seed=0)
    batch = collator(synthetic_rows(8, seed=1))
    torch.manual_seed(5)
    vals = forward_backward(model, loss_fn, split_batch(batch, 2)).values
    model.eval()
    with torch.no_grad():
        full = loss_fn(model(batch))
    # GC features do not depend on the Gumbel noise: the cached full-batch GC loss equals the eval one
    assert abs(vals["loss_gc"] - float(full["loss_gc"])) < ATOL


def _reference_unsharded(batch, halves: int):
    """Single process: GC over all rows + per-sample terms averaged over the per-rank halves (what FSDP's
    gradient averaging of per-rank means computes)."""
    from protclip.model.losses.total import loss_weights

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
    return float(total.detach()), _grads(model)


def _fsdp_worker(rank: int, world: int, batch, accum: int):
    from protclip.train.parallelize import parallelize

    model, loss_fn, _ = tiny_setup(seed=0)
    model.eval()
    parallelize(model, device_type="cpu")
    local = split_batch(batch, world)[rank]
    res = forward_backward(model, loss_fn, split_batch(local, accum))
    loss = torch.tensor([res.values["loss"]])
    torch.distributed.all_reduce(loss)
    return float(loss) / world, _grads(model)


def test_fsdp2_two_ranks_match_unsharded_with_and_without_accumulation():
    _, _, collator = tiny_setup(seed=0)
    batch = collator(synthetic_rows(8, seed=2))
    ref_loss, ref_grads = _reference_unsharded(batch, halves=2)
    for accum in (1, 2):
        results = run_gloo(_fsdp_worker, 2, batch, accum)
        loss, grads = results[0]
        assert abs(loss - ref_loss) < ATOL, (accum, loss, ref_loss)
        assert grads.keys() == ref_grads.keys(), set(grads) ^ set(ref_grads)
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], atol=ATOL, rtol=1e-4, msg=name)
