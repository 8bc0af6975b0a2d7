"""Reliability: bad configuration and storage access (docs/reliability.md §2, §4), through the real entry points.

Every job is run as a subprocess (``python jobs/<job>.py ...``), exactly as a user or ``ray job submit`` runs it.
The guarantee: unknown keys, wrong types, invalid values, missing/broken config files, a missing bucket, missing
or wrong S3 credentials each give a one-line message naming the key or URI on stderr, no traceback, the
documented exit code (2 = config, 3 = storage), and never print a credential. Storage problems are found before
torch or Ray start (seconds, not minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from protclip.paths import REPO_ROOT

PLANTED = "planted-cli-secret-5521"


def _run(job: str, args: list[str], env: dict[str, str] | None = None, timeout: int = 240):
    full_env = {**os.environ, **(env or {})}
    for k, v in list(full_env.items()):
        if v is None:
            del full_env[k]
    return subprocess.run([sys.executable, f"jobs/{job}.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _clean_failure(r, code: int, *needles: str) -> None:
    out = r.stdout + r.stderr
    assert r.returncode == code, (r.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    msg = [ln for ln in r.stderr.splitlines() if ln.startswith(("config error:", "storage error:"))]
    assert len(msg) == 1, r.stderr[-3000:]
    for n in needles:
        assert n in msg[0], (n, msg[0])
    assert PLANTED not in out and "testing-secret-value" not in out


@pytest.mark.parametrize(
    ("yaml_text", "args", "needles"),
    [
        ("train:\n  lrr: 1.0\n", [], ["unknown config key 'train.lrr'", "did you mean lr"]),
        ("", ["--trian.lr", "1"], ["unknown config key 'trian'"]),
        ("", ["--train.lr", "fast"], ["train.lr", "expected a number", "'fast'"]),
        ("train:\n  num_workers: [2]\n", [], ["train.num_workers", "expected an integer"]),
        ("train:\n  num_workers: 0\n", [], ["train.num_workers must be >= 1"]),
        ("model:\n  attention: flash3\n", [], ["model.attention", "flash3"]),
        ("model:\n  max_protein_length: 200\n", [],
         ["unknown config key 'model.max_protein_length'", "did you mean data.max_protein_length?"]),
        ("data: [1, 2\n", [], ["not valid YAML"]),
        ("- just\n- a list\n", [], ["top level must be a mapping"]),
        (None, [], ["config file not found"]),
    ],
    ids=["unknown-yaml-key", "unknown-override", "wrong-type-override", "wrong-type-yaml", "invalid-value",
         "bad-literal", "moved-key", "broken-yaml", "not-a-mapping", "missing-file"],
)
def test_pretrain_config_errors_are_one_clear_line(tmp_path, yaml_text, args, needles):
    cfg = tmp_path / "run.yaml"
    if yaml_text is not None:
        cfg.write_text("data:\n  uri: /tmp/x\n" + yaml_text if yaml_text.startswith(("train", "model")) else
                       yaml_text)
    r = _run("pretrain", ["--config", str(cfg), *args, "--storage.secret_access_key", PLANTED])
    _clean_failure(r, 2, *needles)


@pytest.mark.parametrize(
    ("job", "args", "needles"),
    [
        ("build_protanno", ["--build.chunk_bytes", "lots"], ["build.chunk_bytes", "expected an integer"]),
        ("finetune_lora", ["--config", "jobs/configs/deeploc_lora.yaml", "--lora.rank", "8"],
         ["unknown config key 'lora.rank'"]),
        ("finetune_lora", ["--config", "jobs/configs/deeploc_lora.yaml", "--train.gradient_checkpointing", "true"],
         ["unknown config key 'train.gradient_checkpointing'", "did you mean train.activation_checkpointing?"]),
        ("evaluate", ["--config", "jobs/configs/evaluate.yaml", "--sorce.export", "x"], ["unknown config key 'sorce'"]),
    ],
    ids=["build", "finetune", "finetune-moved-key", "evaluate"],
)
def test_every_job_reports_config_errors_cleanly(job, args, needles):
    _clean_failure(_run(job, args), 2, *needles)


# ------------------------------------------------------------------------------------------------ storage


@pytest.fixture
def data_bucket(s3_bucket, s3_server):
    """A bucket holding a (dummy) ProtAnno prefix, so only the part under test is wrong."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key="protanno/part-0.parquet", Body=b"x")
    return s3_bucket


def _storage_args(bucket: str, run_bucket: str | None = None) -> list[str]:
    return ["--config", "jobs/configs/tiny.yaml", "--data.uri", f"s3://{bucket}/protanno",
            "--storage.storage_path", f"s3://{run_bucket or bucket}/runs", "--storage.access_key_id", "testing",
            "--storage.secret_access_key", PLANTED]


def test_missing_bucket_is_a_clear_storage_error(data_bucket):
    r = _run("pretrain", _storage_args("no-such-bucket-rel"))
    _clean_failure(r, 3, "s3://no-such-bucket-rel/protanno")
    r = _run("pretrain", _storage_args(data_bucket, run_bucket="no-such-runs-rel"))
    _clean_failure(r, 3, "bucket 'no-such-runs-rel'", "does not exist")


def test_missing_credentials_is_a_clear_storage_error(data_bucket, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
           "AWS_PROFILE": None, "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    args = _storage_args(data_bucket)[:6]  # no credentials in the config either
    r = _run("pretrain", args, env=env)
    _clean_failure(r, 3, f"s3://{data_bucket}/protanno", "Unable to locate credentials")


def test_wrong_credentials_are_a_clear_storage_error_and_never_printed(data_bucket, monkeypatch):
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the moto server now checks keys
    args = _storage_args(data_bucket)
    r = _run("pretrain", args[:-4] + ["--storage.access_key_id", "AKIAWRONGKEY0000", *args[-2:]])
    _clean_failure(r, 3, f"s3://{data_bucket}/protanno", "access denied", "check credentials")
    r = _run("pretrain", args[:6], env={"AWS_SECRET_ACCESS_KEY": PLANTED, "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY0001"})
    _clean_failure(r, 3, "access denied")
