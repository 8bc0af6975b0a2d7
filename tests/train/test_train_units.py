"""Trainer pieces without Ray: LR schedule, NaN/inf guard, optimizer state init, checkpoint commit markers,
FLOPs/MFU formula, config validation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from protclip.config import ConfigError, load_config
from protclip.train.checkpoint import (
    COMMITTED,
    CheckpointError,
    TrainState,
    latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from protclip.train.flops import TowerShape, mfu, pass_flops, peak_flops
from protclip.train.optim import build_optimizer, guarded_step, init_optimizer_state
from protclip.train.schedule import WarmupDecay, build_scheduler, warmup_steps_for
from protclip.train.step import forward_backward
from tests.helpers.tolerance import approx_rounding
from tests.helpers.train import run_gloo, split_batch, synthetic_rows, tiny_setup


def test_schedule_values():
    s = WarmupDecay(total_steps=10, warmup_steps=4, kind="linear")
    assert [round(s(i), 6) for i in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert s(4) == 1.0 and s(7) == approx_rounding(0.5) and s(10) == 0.0 and s(50) == 0.0
    c = WarmupDecay(total_steps=10, warmup_steps=0, kind="cosine", min_ratio=0.1)
    assert c(0) == 1.0 and c(5) == approx_rounding(0.55) and c(10) == approx_rounding(0.1)
    assert WarmupDecay(10, 2, "constant")(9) == 1.0
    assert warmup_steps_for(1000, None, 0.03) == 30 and warmup_steps_for(1000, 5, 0.03) == 5
    with pytest.raises(ValueError):
        WarmupDecay(10, 11)


def test_scheduler_keeps_group_ratio():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-3}, {"params": [p2], "lr": 1e-4}])
    sched = build_scheduler(opt, WarmupDecay(10, 4))
    assert [g["lr"] for g in opt.param_groups] == approx_rounding([2e-4, 2e-5])
    for _ in range(4):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == approx_rounding([1e-3, 1e-4])


def _model_and_opt():
    model, loss_fn, collator = tiny_setup(seed=0)
    opt = build_optimizer(model, 1e-3, 0.1, 0.0, (0.9, 0.999), 1e-8)
    return model, loss_fn, collator, opt


def test_param_groups_and_state_init_match_lazy_adam():
    model, loss_fn, collator, opt = _model_and_opt()
    names = {g["name"] for g in opt.param_groups}
    assert names == {"heads", "protein_tower"}
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["protein_tower"] == approx_rounding(0.1 * lrs["heads"])
    assert not any(p.requires_grad for p in model.text_tower.parameters())  # frozen text tower
    # early state init leaves Adam exactly as lazy init would: compare one step against a plain AdamW
    ref, _, _ = tiny_setup(seed=0)
    from protclip.model.protclip import param_groups

    ref_opt = torch.optim.AdamW(param_groups(ref, 1e-3, 0.1, 0.0), lr=1e-3)
    batch = collator(synthetic_rows(4, seed=3))
    model.eval()
    ref.eval()
    for m, o in ((model, opt), (ref, ref_opt)):
        forward_backward(m, loss_fn, [batch])
        o.step()
    # the same ops in the same order in one process, so bit-identical; a shifted bias correction moves some
    # LayerNorm weights by only ~0.2x a forward+backward rounding budget, so a tolerance would hide it
    for (n, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), n
    assert all(int(s["step"]) == 1 for s in opt.state.values())
    init_optimizer_state(opt)  # no-op once state exists
    assert all(int(s["step"]) == 1 for s in opt.state.values())


def test_nan_guard_skips_step_and_keeps_params():
    model, loss_fn, collator, opt = _model_and_opt()
    sched = build_scheduler(opt, WarmupDecay(10, 0, "constant"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    forward_backward(model, loss_fn, [collator(synthetic_rows(4, seed=4))])
    next(model.protein_proj.parameters()).grad.fill_(float("nan"))
    out = guarded_step(model, opt, sched, loss_value=1.0, max_norm=1.0, device=torch.device("cpu"))
    assert out.skipped and math.isnan(out.grad_norm)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None
    assert sched.last_epoch == 1  # the schedule still advances
    # a finite step with an infinite loss value is skipped too; a finite one is taken
    forward_backward(model, loss_fn, [collator(synthetic_rows(4, seed=4))])
    assert guarded_step(model, opt, sched, float("inf"), 1.0, torch.device("cpu")).skipped
    forward_backward(model, loss_fn, [collator(synthetic_rows(4, seed=4))])
    out = guarded_step(model, opt, sched, 2.0, 1.0, torch.device("cpu"))
    assert not out.skipped and out.grad_norm > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_flops_formula_and_mfu():
    shape = TowerShape(n_params=1000, n_layers=2, hidden=8)
    assert pass_flops(shape, [3, 5], with_grad=True) == 6 * 1000 * 8 + 12 * 2 * 8 * (9 + 25)
    assert pass_flops(shape, [3, 5], with_grad=False) == 2 * 1000 * 8 + 4 * 2 * 8 * (9 + 25)
    assert peak_flops(name="NVIDIA H100 80GB HBM3") == 989e12 and peak_flops(name="NVIDIA A100-SXM4") == 312e12
    assert peak_flops(torch.device("cpu")) is None and peak_flops(name="Tesla T4") is None
    assert mfu(989e12, 1.0, 2, 989e12) == 0.5 and mfu(1.0, 1.0, 1, None) is None


def _ckpt_worker(rank: int, world: int, root: str):
    """Train 2 steps, checkpoint, train 1 more; then a fresh model resumes and must match step 3."""
    from protclip.train.parallelize import parallelize

    def build():
        model, loss_fn, collator = tiny_setup(seed=0)
        parallelize(model)
        opt = build_optimizer(model, 1e-3, 0.1, 0.0, (0.9, 0.999), 1e-8)
        return model, loss_fn, collator, opt, build_scheduler(opt, WarmupDecay(5, 1))

    def step(model, loss_fn, collator, opt, sched, i):
        batch = collator(synthetic_rows(4, seed=100 * rank + i))
        vals = forward_backward(model, loss_fn, split_batch(batch, 2)).values
        guarded_step(model, opt, sched, vals["loss"], 1.0, torch.device("cpu"))
        return vals["loss"]

    torch.manual_seed(rank)
    a = build()
    for i in range(2):
        step(*a, i)
    save_checkpoint(root, a[0], a[3], a[4], TrainState(step=2, epoch=1, micro_batches_in_epoch=4))
    ref = step(*a, 2)
    torch.manual_seed(999)  # resume must restore the RNG, not depend on it
    b = build()
    state = load_checkpoint(root, b[0], b[3], b[4])
    got = step(*b, 2)
    return {"ref": ref, "got": got, "step": state.step, "epoch": state.epoch, "lr": b[3].param_groups[0]["lr"],
            "ref_lr": a[3].param_groups[0]["lr"]}


def test_checkpoint_roundtrip_two_ranks_and_commit_marker(tmp_path):
    root = tmp_path / "checkpoint_000000002"
    res = run_gloo(_ckpt_worker, 2, str(root))
    for r in res:
        assert r["step"] == 2 and r["epoch"] == 1
        # same parameters, batch and RNG state, same code and threads in the same process: bit-identical
        assert r["got"] == r["ref"]
        assert r["lr"] == r["ref_lr"]
    meta = verify_checkpoint(root)
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "rng/rank0.pt", "rng/rank1.pt",
            "trainer_state.json"} <= set(meta["files"])
    assert latest_valid_checkpoint(tmp_path) == root
    # a half-written copy (a shard missing) or a missing marker is never taken
    broken = tmp_path / "checkpoint_000000004"
    broken.mkdir()
    for f in root.iterdir():
        if f.is_file() and f.name != "__1_0.distcp":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointError, match="__1_0.distcp"):
        verify_checkpoint(broken)
    (tmp_path / "checkpoint_000000006").mkdir()
    with pytest.raises(CheckpointError, match=COMMITTED):
        verify_checkpoint(tmp_path / "checkpoint_000000006")
    assert latest_valid_checkpoint(tmp_path) == root
    truncated = json.loads((root / COMMITTED).read_text())
    truncated["files"]["trainer_state.json"] += 1
    (broken / COMMITTED).write_text(json.dumps(truncated))
    with pytest.raises(CheckpointError):
        verify_checkpoint(broken)


def test_config_errors_are_clear(tmp_path):
    from protclip.recipes.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="data.uri"):
        load_config(PretrainConfig, None, [])
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(PretrainConfig, None, ["--data.uri", "x", "--train.lr_rate", "1"])
    with pytest.raises(ConfigError, match="accum_steps"):
        load_config(PretrainConfig, None, ["--data.uri", "x", "--train.accum_steps", "0"])
    cfg = load_config(PretrainConfig, None, ["--data.uri", "x", "--data.max_protein_length", "200"])
    from protclip.model.config import collate_config

    assert collate_config(cfg.model, cfg.loss, data_cfg=cfg.data).max_protein_length == 200  # the data crop applies
    assert cfg.global_batch_size == cfg.data.micro_batch_size * cfg.train.accum_steps * cfg.train.num_workers
