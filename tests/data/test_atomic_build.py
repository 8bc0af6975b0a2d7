"""A build never loses the published ProtAnno output (docs/reliability.md §2).

A build writes into a new version folder and publishes it by writing ``manifest.json`` (the pointer) last; a
build that fails (an empty input, a FASTA file renamed ``.dat``, text without any entry) leaves the published
version as it was, exits non-zero with one line naming the file, and leaves no half-written version behind.
Readers follow the pointer and still read flat, pre-versioning folders. Old versions are removed beyond
``build.keep_versions`` (the previous one is kept by default).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from protclip.data.build import (
    BuildConfig,
    BuildInputError,
    collect_garbage,
    publish,
    read_manifest,
    run_build,
)
from protclip.data.holdout import HoldoutConfig
from protclip.data.parquet_files import inspect_parquet, resolve_protanno
from protclip.storage import filesystem

NO_HOLDOUT = HoldoutConfig(mode="none")


def _rows(uri: str) -> int:
    return inspect_parquet(uri).num_rows


def _fasta(uniprot_dat) -> bytes:
    """The real sample entries written as FASTA (what a user may download by mistake)."""
    from protclip.data.uniprot import parse_file

    recs = parse_file(uniprot_dat).records[:5]
    return "".join(f">sp|{r.accession}|{r.entry_name}\n{r.sequence}\n" for r in recs).encode()


@pytest.fixture(scope="module")
def good_build(ray_local, uniprot_dat, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("atomic") / "protanno"
    res = run_build(BuildConfig(inputs=[str(uniprot_dat)], output=str(out), rows_per_shard=60, holdout=NO_HOLDOUT))
    return str(out), res.manifest


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["empty", "fasta", "text"])
def test_failed_build_keeps_the_published_output(good_build, uniprot_dat, tmp_path, kind):
    out, first = good_build
    bad = tmp_path / "uniprot_sprot.dat"
    bad.write_bytes({"empty": b"", "fasta": _fasta(uniprot_dat),
                     "text": b"Release notes\nThis folder holds the downloads of 2024.\n" * 50}[kind])
    before = sorted(p.name for p in Path(out).rglob("*"))
    with pytest.raises(BuildInputError) as ei:
        run_build(BuildConfig(inputs=[str(bad)], output=out, overwrite=True, holdout=NO_HOLDOUT))
    msg = str(ei.value)
    assert str(bad) in msg and "\n" not in msg
    assert {"empty": "empty (0 bytes)", "fasta": "looks like FASTA", "text": "no line starts with 'ID   '"}[kind] in msg
    assert _rows(out) == 103 and read_manifest(out)["version"] == first["version"]
    assert sorted(p.name for p in Path(out).rglob("*")) == before  # nothing left behind


@pytest.mark.ray
def test_build_job_exits_non_zero_with_one_line(good_build, uniprot_dat, tmp_path, capsys):
    """What the user runs (the job's ``main`` under ``run_main``, as the console script does)."""
    from protclip.cli import run_main
    from protclip.recipes.build_protanno import main

    out, first = good_build
    fasta = tmp_path / "proteins.dat"
    fasta.write_bytes(_fasta(uniprot_dat))
    cfg = tmp_path / "build.yaml"
    cfg.write_text(f"build:\n  inputs: [{fasta}]\n  output: {out}\n  overwrite: true\n  holdout:\n    mode: none\n")
    capsys.readouterr()
    rc = run_main(main, ["--config", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and "looks like FASTA" in err[0] and str(fasta) in err[0], err
    assert _rows(out) == 103 and read_manifest(out)["version"] == first["version"]


@pytest.mark.ray
def test_rebuild_publishes_atomically_and_keeps_the_previous_version(ray_local, uniprot_dat, tmp_path):
    """A flat (pre-versioning) folder is read as before; rebuilding publishes a version, keeps one previous,
    removes older ones; every reader follows the pointer."""
    flat = tmp_path / "protanno"
    shutil.copytree(resolve_protanno(str(_single_build(uniprot_dat, tmp_path / "seed"))), flat)
    flat_manifest = json.loads((flat / "manifest.json").read_text())
    assert "version" not in flat_manifest and _rows(str(flat)) == 103  # flat folders read as before
    versions = []
    for _ in range(3):
        res = run_build(BuildConfig(inputs=[str(uniprot_dat)], output=str(flat), overwrite=True,
                                    rows_per_shard=200, holdout=NO_HOLDOUT))
        versions.append(res.manifest["version"])
        assert resolve_protanno(str(flat)) == str(flat / versions[-1]) == res.version_uri
        assert _rows(str(flat)) == 103
    kept = sorted(p.name for p in flat.iterdir() if p.is_dir())
    assert kept == sorted(versions[-2:])  # current + previous; the oldest version and the flat files are gone
    assert not list(flat.glob("*.parquet")) and not (flat / "malformed.jsonl").exists()
    assert read_manifest(str(flat))["previous_version"] == versions[-2]


def _single_build(uniprot_dat, out) -> str:
    """A flat, pre-versioning build: a versioned build's folder with its pointer removed."""
    res = run_build(BuildConfig(inputs=[str(uniprot_dat)], output=str(out), holdout=NO_HOLDOUT))
    return res.version_uri


def test_garbage_collection_keeps_current_and_previous(tmp_path):
    """No Ray: the pointer and the collector on hand-made version folders (keep 1 and keep 2)."""
    out = tmp_path / "out"
    for v in ("v-20260101T000000Z-aaaa", "v-20260102T000000Z-bbbb", "v-20260103T000000Z-cccc",
              "v-20260104T000000Z-dddd"):
        (out / v).mkdir(parents=True)
        (out / v / "part-0.parquet").write_bytes(b"x")
    publish(str(out), str(out / "v-20260102T000000Z-bbbb"), {"rows": 1}, None)
    publish(str(out), str(out / "v-20260103T000000Z-cccc"), {"rows": 2}, None)
    assert read_manifest(str(out)) == {"rows": 2, "version": "v-20260103T000000Z-cccc",
                                       "previous_version": "v-20260102T000000Z-bbbb"}
    removed = collect_garbage(str(out), None, keep=2)
    # the newer, unpublished folder (a failed or running build) is not a published version: removed too
    assert sorted(removed) == ["v-20260101T000000Z-aaaa", "v-20260104T000000Z-dddd"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "v-20260102T000000Z-bbbb",
                                                    "v-20260103T000000Z-cccc"]
    assert collect_garbage(str(out), None, keep=1) == ["v-20260102T000000Z-bbbb"]
    assert not list(out.glob("*.tmp-*"))


def test_pointer_to_a_missing_version_is_one_clear_error(tmp_path):
    from protclip.data.parquet_files import ProtAnnoFileError

    (tmp_path / "manifest.json").write_text(json.dumps({"version": "v-20260101T000000Z-gone"}))
    with pytest.raises(ProtAnnoFileError, match="points to version v-20260101T000000Z-gone, which is missing"):
        inspect_parquet(str(tmp_path))


@pytest.mark.ray
def test_failed_build_on_s3_keeps_the_published_output(ray_local, uniprot_dat, tmp_path, s3_bucket):
    out = f"s3://{s3_bucket}/protanno"
    first = run_build(BuildConfig(inputs=[str(uniprot_dat)], output=out, holdout=NO_HOLDOUT)).manifest
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(BuildInputError, match="empty"):
        run_build(BuildConfig(inputs=[str(empty)], output=out, overwrite=True, holdout=NO_HOLDOUT))
    assert _rows(out) == 103 and read_manifest(out)["version"] == first["version"]
    fs, base = filesystem(out)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(base, detail=False)) == ["manifest.json", first["version"]]
