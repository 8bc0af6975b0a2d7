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


def _waiting_worker(rank: int, world: int, root: str) -> dict:
    from protclip.train.loop import LoopConfig, train_worker

    cfg = tiny_run_config(STEPS, world=world, ckpt_every=STEPS)
    data = SyntheticBatches(cfg, count=cfg.train.accum_steps * STEPS)
    out = {}
    for name, timeout in (("marked", 300.0), ("never", 0.5)):  # the driver marks the round / never does
        run = os.path.join(root, name)
        session = GlooSession(run, data)
        state = train_worker(cfg, session, LoopConfig(total_steps=STEPS, checkpoint_at_start=True,
                                                      wait_start_round_in=run, wait_start_round_s=timeout))
        out[name] = {"start_round": state.extra.get("start_round"), "steps": [r["step"] for r in session.reports]}
    return out


def test_training_waits_for_the_step_zero_round_marker(tmp_path):
    """eval.wait_at_start: after the step-0 checkpoint every rank waits until the driver marks that checkpoint's
    eval round as ended (the marker name the scheduler writes), then trains; without a marker it goes on after
    eval.start_wait_timeout_s and says so in the checkpoint state."""
    import threading
    import time
    from pathlib import Path

    from protclip.train.checkpoint import COMMITTED
    from protclip.train.run_folder import mark_round_ended

    run = Path(tmp_path) / "marked"
    seen: dict[str, object] = {}

    def driver() -> None:  # what EvalScheduler does when the step-0 round ends
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = [p for p in run.glob("checkpoint_000000000_*") if (p / COMMITTED).exists()]
            if done:
                time.sleep(1.0)  # the round "runs"; training must not move meanwhile
                seen["later_checkpoints"] = sorted(p.name for p in run.glob("checkpoint_*") if p not in done)
                mark_round_ended(str(run), str(done[0]), {"step": 0, "suites": {}})
                return
            time.sleep(0.05)

    t = threading.Thread(target=driver, daemon=True)
    t.start()
    outs = run_gloo(_waiting_worker, 2, str(tmp_path))
    t.join(timeout=5)
    assert seen["later_checkpoints"] == []  # nothing trained while the round ran
    for out in outs:
        assert out["marked"] == {"start_round": "ended", "steps": [0, STEPS]}
        assert out["never"] == {"start_round": "timeout", "steps": [0, STEPS]}
