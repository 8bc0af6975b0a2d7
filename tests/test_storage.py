"""Storage URIs and secret redaction."""

from __future__ import annotations

import pytest

from protclip.storage import StorageConfig, StorageError, check_access, filesystem, redact, redact_mapping


def test_local_and_s3_roundtrip(tmp_path, s3_bucket):
    for uri in (str(tmp_path / "x"), f"s3://{s3_bucket}/x"):
        fs, path = filesystem(uri)
        fs.makedirs(path, exist_ok=True)
        with fs.open(path + "/a.txt", "wb") as f:
            f.write(b"hello")
        with fs.open(path + "/a.txt", "rb") as f:
            assert f.read() == b"hello"


def test_missing_bucket_is_clear(s3_server):
    with pytest.raises(StorageError, match="no-such-bucket"):
        check_access("s3://no-such-bucket/prefix", write=True)
    with pytest.raises(StorageError, match="no such file"):
        check_access("/definitely/not/here")


def test_secrets_never_printed(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-planted-value")
    cfg = StorageConfig(access_key_id="AKIAPLANTED", secret_access_key="other-secret-xyz")
    assert "other-secret-xyz" not in repr(cfg) and "AKIAPLANTED" not in repr(cfg)
    assert "s3cr3t-planted-value" not in redact("error: key s3cr3t-planted-value rejected")
    assert "pw123456" not in redact("postgresql://user:pw123456@db:5432/mlflow")
    flat = redact_mapping({"storage.secret_access_key": "other-secret-xyz", "storage.region": "us-east-1",
                           "note": "uses s3cr3t-planted-value"})
    assert flat["storage.secret_access_key"] == "***" and flat["storage.region"] == "us-east-1"
    assert "s3cr3t" not in flat["note"]
