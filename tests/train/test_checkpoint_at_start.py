"""LoopConfig.checkpoint_at_start (eval.at_start): a fresh run validates and checkpoints the untrained model as
step 0, and doing so leaves the training run itself unchanged (same losses at every step)."""

from __future__ import annotations

import os

from tests.helpers.train import GlooSession, SyntheticBatches, run_gloo, tiny_run_config

STEPS = 3


def _worker(rank: int, world: int, root: str) -> dict:
    from protclip.train.loop import LoopConfig, train_worker

    cfg = tiny_run_config(STEPS, world=world, ckpt_every=STEPS)
    data = SyntheticBatches(cfg, count=cfg.train.accum_steps * STEPS)
    plain = GlooSession(os.path.join(root, "plain"), data)
    train_worker(cfg, plain, LoopConfig(total_steps=STEPS))
    with_start = GlooSession(os.path.join(root, "start"), data)
    train_worker(cfg, with_start, LoopConfig(total_steps=STEPS, checkpoint_at_start=True))
    return {"plain": plain.reports, "start": with_start.reports, "start_ckpts": with_start.checkpoints}


def test_step_zero_checkpoint_leaves_training_unchanged(tmp_path):
    out = run_gloo(_worker, 2, str(tmp_path))[0]
    plain, start = out["plain"], out["start"]
    assert [r["step"] for r in plain] == [STEPS]
    assert [r["step"] for r in start] == [0, STEPS]  # the extra report is the untrained model's checkpoint
    assert len(out["start_ckpts"]) == 2 and os.path.isdir(out["start_ckpts"][0])
    # the training losses reported at the last step are bit-identical with and without the step-0 checkpoint
    keys = [k for k in plain[0] if k.startswith("train/loss")]
    assert keys and all(start[1][k] == plain[0][k] for k in keys)
