"""Packed (padding-free) pre-training end to end: the shipped ``jobs/configs/tiny.yaml`` with ``data.batching:
packed`` through the real Ray Data pipeline and Ray Train (2 FSDP2 workers, gloo), on ProtAnno built from the 103
real UniProt samples.

One ``TorchTrainer.fit``: the schedule length comes from the packed step estimate (``train.max_steps: null``);
rank 1 SIGKILLs itself after step ``KILL_AT`` (``PROTCLIP_FAULT_*``, protclip/train/faults.py), Ray Train restarts
the worker group from the step-``CKPT`` checkpoint, and the steps run twice (before the kill = uninterrupted, after
the restart = resumed) must log identical losses. The driver then replays the deterministic split to check the
estimate and the global ``pairs_seen`` against the micro-batches the ranks really got.
"""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest

from protclip.paths import REPO_ROOT

pytestmark = pytest.mark.ray

MAX_TOKENS = 520  # 4 proteins at the tiny config's 130-token crop; most real samples are longer than the crop
CKPT, KILL_AT = 4, 7  # the resumed steps (5..7) cross the epoch boundary (about 6 steps per epoch)


@pytest.fixture(scope="module")
def env(tmp_path_factory, uniprot_dat, ray_local):
    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file

    tmp = tmp_path_factory.mktemp("packed_ray")
    rep = parse_file(uniprot_dat)
    assert not rep.errors and len(rep.records) == 103
    table = rows_to_table(sorted((record_to_row(r) for r in rep.records), key=lambda r: r["accession"]))
    (tmp / "protanno").mkdir()
    for i, start in enumerate((0, 35, 70)):
        pq.write_table(table.slice(start, 35), tmp / "protanno" / f"part-{i}.parquet", row_group_size=8)
    return {"tmp": tmp, "data": str(tmp / "protanno"), "tracking": f"sqlite:///{tmp}/mlflow.db"}


def _cfg(env):
    from protclip.config import load_config
    from protclip.recipes.pretrain import PretrainConfig

    return load_config(PretrainConfig, REPO_ROOT / "jobs" / "configs" / "tiny.yaml", {
        "data.uri": env["data"], "data.batching": "packed", "data.max_tokens": str(MAX_TOKENS),
        "data.num_epochs": "2", "train.max_steps": "null", "train.warmup_steps": "2",
        "train.ckpt_every": str(CKPT), "train.val_every": str(CKPT), "train.log_every": "1",
        "train.keep_checkpoints": "2", "train.export": "false", "eval.every_steps": "0",
        "storage.storage_path": str(env["tmp"] / "runs"), "storage.name": "packed",
        "tracking.uri": env["tracking"], "tracking.experiment": "packed-ray-test",
    })  # fmt: skip


@pytest.fixture(scope="module")
def run(env):
    from protclip.recipes.pretrain import run_pretrain

    marker = env["tmp"] / "kill.marker"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AT_STEP": str(KILL_AT), "RANK": "1", "ACTION": "kill", "MARKER": str(marker)}.items():
            mp.setenv(f"PROTCLIP_FAULT_{k}", v)
        res = run_pretrain(_cfg(env))
    assert marker.is_file() and f"rank=1 step={KILL_AT} action=kill" in marker.read_text()  # the fault fired
    return res


def _history(env, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) in logging order: the steps run again after the restart appear twice."""
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(env["tracking"]).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.timestamp, m.step))]


def _replay(cfg) -> tuple[object, list[list[dict]]]:
    """Every rank's micro-batches (host tensors) of the deterministic split, as the workers iterate them."""
    from protclip.data.pipeline import build_pretrain_datasets, iter_micro_batches
    from protclip.model.config import collate_config

    data = build_pretrain_datasets(cfg.data, collate_config(cfg.model, cfg.loss, data_cfg=cfg.data),
                                   world_size=cfg.train.num_workers)
    ranks = [list(iter_micro_batches(data.train, rank=r, world_size=cfg.train.num_workers))
             for r in range(cfg.train.num_workers)]
    return data, ranks


def test_packed_run_logs_unpadded_metrics_and_resumes_with_identical_losses(env, run):
    from mlflow.tracking import MlflowClient

    from protclip.data.collate import batch_rows, is_packed

    cfg = _cfg(env)
    client = MlflowClient(env["tracking"])
    mlrun = client.get_run(run.run_id)
    assert mlrun.info.status == "FINISHED"
    total = int(mlrun.data.params["derived.total_steps"])
    assert run.metrics["step"] == total

    losses = _history(env, run.run_id, "train/loss")
    assert sorted({s for s, _ in losses}) == list(range(1, total + 1))
    assert all(math.isfinite(v) for _, v in losses)
    # steps CKPT+1..KILL_AT ran before the kill and again from the step-CKPT checkpoint: the same losses
    first, again = {}, {}
    for s, v in losses:
        (again if s in first else first)[s] = v
    assert sorted(again) == list(range(CKPT + 1, KILL_AT + 1))
    # same machine, data, RNG and pinned worker threads: the same computation in the same order, so no rounding
    # budget applies (and none could bound a trajectory, where a first difference grows with every step)
    assert again == {s: first[s] for s in again}

    for key in ("perf/tokens_per_s", "perf/padded_tokens_per_s", "perf/tokens_per_s_per_device"):
        values = [v for _, v in _history(env, run.run_id, key)]
        assert len(values) >= total and all(math.isfinite(v) and v > 0 for v in values), key
    # packed: every token slot the towers compute is a real token
    assert [v for _, v in _history(env, run.run_id, "perf/padding_share")] == [0.0] * len(losses)
    assert _history(env, run.run_id, "perf/tokens_per_s") == _history(env, run.run_id, "perf/padded_tokens_per_s")
    assert "val/loss" in mlrun.data.metrics and math.isfinite(mlrun.data.metrics["val/loss"])

    # the driver replays the deterministic split: packed micro-batches, varying pairs per rank
    data, ranks = _replay(cfg)
    assert data.manifest["batching"] == "packed"
    world, accum = cfg.train.num_workers, cfg.train.accum_steps
    assert all(is_packed(mb) for r in ranks for mb in r)
    assert all(int(mb["protein_cu_seqlens"][-1]) <= MAX_TOKENS for r in ranks for mb in r)
    # the step estimate (schedule length) against what each rank really got, per epoch: the estimate packs
    # another random order of the same rows, which moves each shuffle buffer's count by about one micro-batch
    buffers = -(-max(data.manifest["train_rows_per_epoch"].values()) // cfg.data.window_rows)
    for e, est in data.micro_batches_per_epoch.items():
        got = sum(int(mb["epoch"]) == e for mb in ranks[0])  # per rank: the epoch's last incomplete group dropped
        assert abs(got - est / world) <= buffers / world + 1, (e, got, est)
    assert total == data.steps_per_epoch * cfg.data.num_epochs // accum

    # pairs_seen is the global count: the pairs both ranks consumed, which differ from rank to rank
    folders = (env["tmp"] / "runs" / "packed").glob("checkpoint_*/trainer_state.json")
    state = max((json.loads(p.read_text()) for p in folders), key=lambda st: st["step"])
    assert state["step"] == total
    per_rank = [sum(batch_rows(mb) for mb in r[: total * accum]) for r in ranks]
    assert per_rank[0] != per_rank[1]  # so rows-on-one-rank x world could not give the right count
    assert state["pairs_seen"] == sum(per_rank)
