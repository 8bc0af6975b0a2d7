"""Ray Train end to end: ProtAnno on moto S3 -> 2 FSDP2 workers (gloo) with feature-cache accumulation ->
checkpoints on s3:// -> MLflow (sqlite) -> exported towers. One ``TorchTrainer.fit``.

Restarts that reproduce the uninterrupted losses are tested where they happen: a killed worker or driver
(test_reliability_faults.py), a lost node (test_two_nodes.py), packed batches (test_packed_ray.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from protclip.config import load_config
from protclip.data.schema import record_to_row, rows_to_table
from protclip.data.uniprot import parse_file
from protclip.recipes.pretrain import PretrainConfig
from protclip.storage import filesystem

pytestmark = pytest.mark.ray

PLANTED = "planted-cfg-secret-4471"
STEPS, CKPT = 6, 3


def _upload_protanno(uniprot_dat: Path, bucket: str, endpoint: str) -> str:
    from protclip.storage import StorageConfig

    rows = sorted((record_to_row(r) for r in parse_file(uniprot_dat).records), key=lambda r: r["accession"])
    uri = f"s3://{bucket}/protanno"
    fs, base = filesystem(uri, StorageConfig(endpoint_url=endpoint))
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        with fs.open(f"{base}/part-{i:05d}.parquet", "wb") as f:
            pq.write_table(rows_to_table(part), f, row_group_size=16)
    return uri


def _cfg(data_uri: str, storage_path: str, name: str, endpoint: str, **train) -> PretrainConfig:
    overrides = {
        "data.uri": data_uri, "data.sampling.mode": "none", "data.micro_batch_size": "4",
        "data.max_protein_length": "130", "data.max_text_length": "128", "data.max_subtext_length": "64",
        "data.bucket_window": "16", "data.shuffle_buffer": "32", "data.val_fraction": "0.15",
        "data.val_max_rows": "8", "data.num_epochs": "3", "data.split": "deterministic", "data.map_num_cpus": "0.5",
        "model.protein_model": "random", "model.text_model": "random", "model.attention": "sdpa",
        "model.projection_dim": "32", "model.proto_num": "16",
        "train.num_workers": "2", "train.accum_steps": "2", "train.lr": "1e-3", "train.warmup_steps": "2",
        "train.max_steps": str(STEPS), "train.ckpt_every": str(CKPT), "train.val_every": str(CKPT),
        "train.log_every": "1", "train.keep_checkpoints": "2",
        "storage.storage_path": storage_path, "storage.name": name, "storage.endpoint_url": endpoint,
        "storage.access_key_id": "testing", "storage.secret_access_key": PLANTED,
        "tracking.experiment": "train-ray-test",
    }  # fmt: skip
    overrides.update({f"train.{k}": str(v) for k, v in train.items()})
    return load_config(PretrainConfig, None, overrides)


@pytest.fixture(scope="module")
def env(tmp_path_factory, uniprot_dat, s3_server, ray_local):
    import os

    import boto3

    tmp = tmp_path_factory.mktemp("train_ray")
    bucket = "train-ray"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    yield {"tmp": tmp, "tracking_uri": tracking_uri, "bucket": bucket, "endpoint": s3_server,
           "data": _upload_protanno(uniprot_dat, bucket, s3_server), "storage": f"s3://{bucket}/runs"}
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="module")
def full_run(env):
    from protclip.recipes.pretrain import run_pretrain

    cfg = _cfg(env["data"], env["storage"], "full", env["endpoint"])
    return run_pretrain(cfg)


def _history(tracking_uri: str, run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)}


def test_end_to_end_s3_mlflow_export(env, full_run, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import BertModel, BertTokenizer, EsmModel, EsmTokenizer

    client = MlflowClient(env["tracking_uri"])
    run = client.get_run(full_run.run_id)
    assert run.info.status == "FINISHED"
    losses = _history(env["tracking_uri"], full_run.run_id, "train/loss")
    assert sorted(losses) == list(range(1, STEPS + 1))
    for key in ("train/loss_gc", "train/loss_mlm", "train/loss_bsr", "train/loss_pda", "train/lr_heads",
                "perf/pairs_per_s", "perf/tokens_per_s", "perf/data_wait_share", "perf/padding_share",
                "train/grad_norm", "train/skipped_steps", "val/loss", "val/p2t_r1", "val/t2p_r10"):
        assert key in run.data.metrics, key
    assert "perf/mfu" not in run.data.metrics  # CPU: peak unknown, not logged
    assert run.data.params["train.accum_steps"] == "2"
    assert run.data.params["storage.secret_access_key"] == "***"

    # checkpoints on s3 with their commit markers; the run keeps at most 2 (+ latest)
    fs, base = filesystem(f"{env['storage']}/full", _cfg(env["data"], env["storage"], "x", env["endpoint"]).storage)
    ckpts = sorted(p for p in fs.ls(base, detail=False) if p.rsplit("/", 1)[-1].startswith("checkpoint_0"))
    assert ckpts and all(fs.exists(f"{c}/COMMITTED") and fs.exists(f"{c}/.metadata") for c in ckpts)
    assert json.loads(fs.cat(f"{ckpts[-1]}/trainer_state.json"))["step"] == STEPS

    # artifacts: config, data manifest, exported towers loadable by plain transformers
    art = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (art / "config" / "config.yaml").is_file() and (art / "data" / "manifest.json").is_file()
    assert EsmModel.from_pretrained(art / "export" / "protein").config.hidden_size == 64
    assert BertModel.from_pretrained(art / "export" / "text").config.hidden_size == 64
    EsmTokenizer.from_pretrained(art / "export" / "protein")
    BertTokenizer.from_pretrained(art / "export" / "text")
    # the same export sits beside the checkpoints in storage
    fs.get(f"{base}/export/protein", str(tmp_path / "protein"), recursive=True)
    assert EsmModel.from_pretrained(tmp_path / "protein").config.architectures == ["EsmModel"]

    # the planted config secret appears in no param, tag or artifact
    texts = list(run.data.params.values()) + list(run.data.tags.values())
    texts += [p.read_text(errors="replace") for p in art.rglob("*") if p.is_file() and p.suffix in
              (".json", ".yaml", ".txt")]
    assert not any(PLANTED in t for t in texts)
