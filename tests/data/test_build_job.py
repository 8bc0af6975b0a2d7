"""The distributed ProtAnno build job, end to end on the real UniProt samples (local folder and moto S3)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from protclip.data.build import BuildConfig, read_manifest, run_build
from protclip.data.holdout import HoldoutConfig
from protclip.data.parquet_files import resolve_protanno
from protclip.data.sampling import SamplingConfig, keep_mask
from protclip.data.schema import PROTANNO_SCHEMA, SCHEMA_VERSION, record_to_row
from protclip.data.uniprot import parse_file
from protclip.storage import filesystem

#: these tests are about parsing and writing; the cluster split (mmseqs) is tested in test_build_holdout.py
HASH = HoldoutConfig(mode="hash")

pytestmark = pytest.mark.ray


def _read_rows(uri: str) -> list[dict]:
    fs, base = filesystem(resolve_protanno(uri))  # the published version folder
    files = sorted(p for p in fs.ls(base, detail=False)
                   if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith("_"))  # _holdout.parquet
    rows = []
    for p in files:
        with fs.open(p, "rb") as f:
            t = pq.read_table(f)
        assert t.schema.metadata[b"protclip.schema_version"].decode() == SCHEMA_VERSION
        assert t.schema.remove_metadata().equals(PROTANNO_SCHEMA.remove_metadata()), p
        rows += t.to_pylist()
    return sorted(rows, key=lambda r: r["accession"])


def _pure_rows(path, source: str) -> list[dict]:
    rep = parse_file(path, source_name=source)
    assert not rep.errors
    return sorted((record_to_row(r) for r in rep.records), key=lambda r: r["accession"])


def test_build_local_equals_pure_parser(ray_local, uniprot_dat, tmp_path):
    out = tmp_path / "protanno"
    res = run_build(BuildConfig(inputs=[str(uniprot_dat)], output=str(out), chunk_bytes=200_000, rows_per_shard=30,
                                holdout=HASH))
    m = res.manifest
    assert m["seen"] == m["parsed"] == m["rows"] == 103 and m["malformed"] == 0
    assert len(m["shards"]) >= 2  # several parse tasks -> several shards
    assert sum(n for by_k in m["pe_k_histogram"].values() for n in by_k.values()) == 103
    assert read_manifest(str(out)) == json.loads((out / "manifest.json").read_text())
    built = _read_rows(str(out))
    pure = _pure_rows(uniprot_dat, str(uniprot_dat))
    assert [r["accession"] for r in built] == [r["accession"] for r in pure]
    assert built == pure  # byte offsets included: chunking does not change what a record is


def test_build_gz_through_s3(ray_local, uniprot_dat, tmp_path, s3_bucket):
    gz = tmp_path / "uniprot_sprot.dat.gz"
    with open(uniprot_dat, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    fs, _ = filesystem(f"s3://{s3_bucket}")
    fs.put(str(gz), f"{s3_bucket}/raw/uniprot_sprot.dat.gz")
    src_uri = f"s3://{s3_bucket}/raw/uniprot_sprot.dat.gz"
    out = f"s3://{s3_bucket}/protanno/v1"
    sampling = SamplingConfig(mode="once", seed=3)
    res = run_build(BuildConfig(inputs=[f"s3://{s3_bucket}/raw/"], output=out, chunk_bytes=100_000, holdout=HASH,
                                sampling=sampling))
    m = res.manifest
    built = _read_rows(out)
    pure = _pure_rows(uniprot_dat, src_uri)
    import numpy as np

    keep = keep_mask(np.array([r["reviewed"] for r in pure]), np.array([r["protein_existence"] for r in pure]),
                     np.array([r["n_properties"] for r in pure]), np.array([r["accession"] for r in pure], dtype=object),
                     sampling, epoch=0)
    expected = [r for r, k in zip(pure, keep, strict=True) if k]
    assert 0 < len(expected) < len(pure)  # the 12 TrEMBL entries are filtered, Swiss-Prot kept
    assert built == expected
    assert m["rows"] + m["sampling"]["sampled_out"] == m["parsed"] == 103
    assert read_manifest(out)["checksum"] == m["checksum"]


def _corrupt(text: str) -> tuple[str, int]:
    """Break three real records in three different ways; returns the text and the number broken."""
    recs = text.split("\n//\n")
    recs[3] = recs[3].replace("\nSQ   SEQUENCE", "\nSQ   SEQUENCE", 1).replace("\n     ", "\n     XX12", 1)
    recs[10] = recs[10].replace("\nAC   ", "\nQQ   unknown line code\nAC   ", 1)
    recs[20] = recs[20][: len(recs[20]) // 2]  # truncated in the middle (terminator kept by the join)
    return "\n//\n".join(recs), 3


def test_corrupted_input_is_reported_not_fatal(ray_local, uniprot_dat, tmp_path):
    bad_text, n_bad = _corrupt(uniprot_dat.read_text())
    bad = tmp_path / "in" / "corrupt.dat"
    bad.parent.mkdir()
    bad.write_text(bad_text + "\x00\x01 binary junk\n")
    out = tmp_path / "out"
    res = run_build(BuildConfig(inputs=[str(bad.parent)], output=str(out), chunk_bytes=150_000, holdout=HASH))
    m = res.manifest
    assert m["rows"] + m["malformed"] == m["seen"]
    assert m["rows"] == 103 - n_bad
    assert m["malformed"] == n_bad + 1  # + the binary junk after the last entry
    assert m["malformed_by_reason"], m
    lines = (Path(res.version_uri) / "malformed.jsonl").read_text().splitlines()
    assert len(lines) == m["malformed"]
    for e in map(json.loads, lines):
        assert e["source"].endswith("corrupt.dat") and e["reason"] and e["byte_offset"] >= 0


def test_job_cli_clear_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("build:\n  inputs: [/no/such/file.dat]\n  output: %s\n" % (tmp_path / "o"))
    r = subprocess.run([sys.executable, "jobs/build_protanno.py", "--config", str(cfg), "--ray.num_cpus", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and "input not found: /no/such/file.dat" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "jobs/build_protanno.py", "--config", str(cfg), "--build.chunk_byte", "5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "build.chunk_byte" in r.stderr and "chunk_bytes" in r.stderr
