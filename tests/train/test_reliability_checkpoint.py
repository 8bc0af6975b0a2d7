"""Reliability: checkpoints (docs/reliability.md §1, §3, §4). No Ray cluster.

* Atomic commit: a checkpoint folder damaged the ways a crash or a partial upload leaves it (no COMMITTED marker,
  a torn marker, a truncated or missing shard, missing trainer state or DCP metadata) is never loaded: the
  worker-side verifier, the Ray worker's resume path (``RaySession.latest_checkpoint``) and the driver's
  ``peek_latest_state`` all fall back to the previous complete checkpoint, and a refused load leaves the model
  untouched.
* Disk full while checkpointing (2 gloo ranks, FSDP2, a real file-size limit): a clear ``CheckpointError`` on
  every rank, and the previous checkpoint still verifies and loads.
* Tampered files: a pickle payload planted in DCP's ``.metadata`` or in an RNG file is refused and never runs;
  genuine sharded FSDP2 checkpoints still load through the allow-listed reader.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from protclip.train.checkpoint import (
    COMMITTED,
    CheckpointError,
    TrainState,
    committed_manifest,
    latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from tests.helpers.train import run_gloo


def _model() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train(model, opt, sched, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(4, 16)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def run_dir(tmp_path):
    """A run folder with two committed checkpoints (steps 2 and 4) and the parameters at each."""
    model, opt, sched = _model()
    run = tmp_path / "run"
    _train(model, opt, sched, 2)
    save_checkpoint(run / "checkpoint_000000002_a", model, opt, sched, TrainState(step=2))
    at2 = _params(model)
    _train(model, opt, sched, 2)
    save_checkpoint(run / "checkpoint_000000004_a", model, opt, sched, TrainState(step=4))
    return run, at2


def _damage(ckpt: Path, how: str) -> None:
    shard = next(ckpt.glob("__*_0.distcp"))
    if how == "no_marker":  # crashed before the commit (or a copy without it)
        (ckpt / COMMITTED).unlink()
    elif how == "marker_tmp_only":  # crashed between writing COMMITTED.tmp and the rename
        (ckpt / COMMITTED).rename(ckpt / (COMMITTED + ".tmp"))
    elif how == "torn_marker":
        (ckpt / COMMITTED).write_text((ckpt / COMMITTED).read_text()[:25])
    elif how == "shard_truncated":  # upload stopped mid-file
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "shard_missing":  # one rank's upload never arrived
        shard.unlink()
    elif how == "state_missing":
        (ckpt / "trainer_state.json").unlink()
    elif how == "metadata_missing":
        (ckpt / ".metadata").unlink()
    else:
        raise ValueError(how)


DAMAGE = ["no_marker", "marker_tmp_only", "torn_marker", "shard_truncated", "shard_missing", "state_missing",
          "metadata_missing"]  # fmt: skip


@pytest.mark.parametrize("how", DAMAGE)
def test_half_written_checkpoint_is_never_loaded(run_dir, how):
    import fsspec

    run, at2 = run_dir
    newest = run / "checkpoint_000000004_a"
    _damage(newest, how)
    with pytest.raises(CheckpointError, match=str(newest)):
        verify_checkpoint(newest)
    assert committed_manifest(fsspec.filesystem("file"), str(newest)) is None  # driver-side twin agrees
    assert latest_valid_checkpoint(run) == run / "checkpoint_000000002_a"

    model, opt, sched = _model()
    before = _params(model)
    with pytest.raises(CheckpointError):
        load_checkpoint(newest, model, opt, sched)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "refused load changed the model"
    state = load_checkpoint(latest_valid_checkpoint(run), model, opt, sched)
    assert state.step == 2
    assert all(torch.equal(at2[k], v) for k, v in model.state_dict().items())


def _worker_session(monkeypatch, run: Path):
    """A ``RaySession`` as on rank 0 of a restarted worker group whose Ray Train run folder is ``run``."""
    import types

    import pyarrow.fs as pafs
    import ray.train

    from protclip.ray_session import RaySession

    storage_ctx = types.SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), experiment_fs_path=str(run))
    monkeypatch.setattr(ray.train, "get_context", lambda: types.SimpleNamespace(get_storage=lambda: storage_ctx))
    session = RaySession.__new__(RaySession)
    session.rank, session.world_size, session.resume_from = 0, 1, None
    return session


@pytest.mark.parametrize("reported", [None, "checkpoint_000000002_a"])
def test_ray_worker_resumes_from_a_committed_checkpoint_ray_never_registered(run_dir, monkeypatch, reported):
    """A worker that dies right after reporting a checkpoint can take the report with it (the controller had not
    polled it yet): Ray then hands an older checkpoint, or none early in a run. The worker still resumes from the
    newest complete checkpoint in the run folder, not from an older one or from step 0."""
    import ray.train

    run, _ = run_dir
    session = _worker_session(monkeypatch, run)
    monkeypatch.setattr(ray.train, "get_checkpoint",
                        lambda: ray.train.Checkpoint(str(run / reported)) if reported else None)
    with session.latest_checkpoint() as d:
        assert Path(d) == run / "checkpoint_000000004_a"


def test_ray_worker_resume_path_skips_the_damaged_latest(run_dir, monkeypatch):
    """``RaySession.latest_checkpoint`` (what every Ray Train worker runs on restart) gets Ray's latest, finds it
    incomplete and hands over the newest complete one; with none complete it raises instead of loading junk."""
    import ray.train


    run, _ = run_dir
    _damage(run / "checkpoint_000000004_a", "shard_truncated")
    session = _worker_session(monkeypatch, run)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(str(run / "checkpoint_000000004_a")))
    with session.latest_checkpoint() as d:
        assert Path(d) == run / "checkpoint_000000002_a"
    _damage(run / "checkpoint_000000002_a", "no_marker")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        with session.latest_checkpoint():
            pass


def test_driver_peek_ignores_a_half_uploaded_checkpoint(run_dir):
    """The restarted driver reads the resume state (epoch, step) from the newest *complete* checkpoint."""
    from protclip.config import load_config
    from protclip.recipes.pretrain import PretrainConfig
    from protclip.train.run_folder import peek_latest_state

    run, _ = run_dir
    cfg = load_config(PretrainConfig, None, {"data.uri": "unused", "storage.storage_path": str(run.parent),
                                             "storage.name": run.name})
    assert peek_latest_state(cfg)["step"] == 4
    _damage(run / "checkpoint_000000004_a", "shard_missing")
    assert peek_latest_state(cfg)["step"] == 2


# ------------------------------------------------------------------------------------------------ disk full


def _disk_full_rank(rank: int, world: int, root: str) -> dict:
    """Two FSDP2 ranks: checkpoint 1 commits; then every file write above 16 KiB fails (RLIMIT_FSIZE, a real
    EFBIG from the kernel, as root too) while checkpoint 2 is written."""
    import resource
    import signal

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, _, _ = _model()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    _train(model, opt, sched, 1)
    save_checkpoint(f"{root}/checkpoint_1", model, opt, sched, TrainState(step=1))
    at1 = {k: v.full_tensor().clone() for k, v in model.state_dict().items()}
    _train(model, opt, sched, 1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, hard))
    out: dict = {"error": None}
    try:
        save_checkpoint(f"{root}/checkpoint_2", model, opt, sched, TrainState(step=2))
    except Exception as e:  # noqa: BLE001 - the type and message are what the test checks
        out = {"error": str(e), "type": type(e).__name__}
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    torch.distributed.barrier()
    out["latest"] = str(latest_valid_checkpoint(root))
    fresh, _, _ = _model()  # sharded state written by 2 ranks loads through the allow-listed DCP reader
    fully_shard(fresh, mesh=init_device_mesh("cpu", (world,)))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    out["loaded_step"] = load_checkpoint(out["latest"], fresh, fresh_opt,
                                         torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda s: 1.0)).step
    out["same_weights"] = all(torch.equal(at1[k], v.full_tensor()) for k, v in fresh.state_dict().items())
    return out


def test_disk_full_while_checkpointing_is_a_clear_error_and_keeps_the_previous(tmp_path):
    results = run_gloo(_disk_full_rank, 2, str(tmp_path), timeout=240)
    for r in results:
        assert r["type"] == "CheckpointError", r
        assert f"could not write the checkpoint of step 2 to {tmp_path}/checkpoint_2" in r["error"]
        assert "previous committed checkpoint is untouched" in r["error"] and "MiB free" in r["error"]
        assert "Traceback" not in r["error"]
        assert r["latest"] == str(tmp_path / "checkpoint_1") and r["loaded_step"] == 1 and r["same_weights"]
    assert not (tmp_path / "checkpoint_2" / COMMITTED).exists()
    verify_checkpoint(tmp_path / "checkpoint_1")


# ------------------------------------------------------------------------------------------------ tampering


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the test fails if the marker file ever appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _recommit(ckpt: Path) -> None:
    """Rewrite the COMMITTED manifest so the tampered folder passes the completeness check (as an attacker
    with write access to the bucket could): only the safe unpickling stands in the way."""
    meta = json.loads((ckpt / COMMITTED).read_text())
    meta["files"] = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
                     if p.is_file() and p.name != COMMITTED}
    (ckpt / COMMITTED).write_text(json.dumps(meta))
    verify_checkpoint(ckpt)


@pytest.mark.parametrize("target", [".metadata", "rng/rank0.pt"])
def test_tampered_checkpoint_never_executes_code(run_dir, tmp_path, target):
    run, _ = run_dir
    ckpt = run / "checkpoint_000000004_a"
    marker = tmp_path / f"pwned-{target.replace('/', '_')}"
    if target == ".metadata":
        (ckpt / target).write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"torch": torch.get_rng_state(), "x": _Payload(marker)}, ckpt / target)
    _recommit(ckpt)
    model, opt, sched = _model()
    with pytest.raises((CheckpointError, pickle.UnpicklingError)) as ei:
        load_checkpoint(ckpt, model, opt, sched)
    assert not marker.exists(), "code planted in the checkpoint ran"
    if target == ".metadata":
        assert "open, which a DCP checkpoint never contains" in str(ei.value) and "refused" in str(ei.value)


def test_copied_checkpoint_is_self_describing(run_dir, tmp_path):
    """A committed checkpoint copied elsewhere (``aws s3 sync``, ``cp -r``) still verifies; a copy that missed a
    file does not."""
    run, _ = run_dir
    dst = tmp_path / "copy"
    shutil.copytree(run / "checkpoint_000000004_a", dst)
    assert verify_checkpoint(dst)["step"] == 4
    os.remove(next(dst.glob("rng/*.pt")))
    with pytest.raises(CheckpointError, match="missing"):
        verify_checkpoint(dst)
