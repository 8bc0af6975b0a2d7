"""Corrupt ProtAnno shards are named, not decoded into garbage (docs/reliability.md §2).

Two guards: (1) when a run starts, the shards are checked against the build manifest's per-shard size and
SHA-256 in Ray tasks (``data.verify``), which catches damage in columns the trainer never reads; (2) damage that
is read anyway (verification off or sampled) becomes one ``ProtAnnoFileError`` naming the shard, the row group
and the column, raised from the Ray Data read task within seconds.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from protclip.data.build import BuildConfig, run_build
from protclip.data.config import DataConfig
from protclip.data.holdout import HoldoutConfig
from protclip.data.parquet_files import (
    Fragment,
    ProtAnnoFileError,
    inspect_parquet,
    protanno_error_of,
    read_fragment,
    resolve_protanno,
)
from protclip.data.sampling import SamplingConfig
from protclip.data.verify import choose_hashed, verify_shards


def _scribble(path: Path, row_group: int, column: str, n: int = 256, seed: int = 0) -> None:
    """Write ``n`` random bytes into the middle of ``column``'s pages in ``row_group`` (size unchanged)."""
    md = pq.ParquetFile(path).metadata
    col = md.row_group(row_group).column(md.schema.to_arrow_schema().names.index(column))
    start = col.dictionary_page_offset or col.data_page_offset
    size = col.total_compressed_size
    assert size > n + 64, (column, size)
    at = start + 32 + (size - n - 64) // 2  # past the page header, inside the page data
    raw = bytearray(path.read_bytes())
    raw[at:at + n] = random.Random(seed).randbytes(n)
    path.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def built(ray_local, uniprot_dat, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "protanno"
    run_build(BuildConfig(inputs=[str(uniprot_dat)], output=str(out), chunk_bytes=200_000, rows_per_shard=30,
                          row_group_rows=20, holdout=HoldoutConfig(mode="none")))
    return out


@pytest.fixture
def copy(built, tmp_path) -> tuple[Path, Path]:
    """A private copy of the built output (pointer + version folder) and its first shard."""
    dst = tmp_path / "protanno"
    shutil.copytree(built, dst)
    folder = Path(resolve_protanno(str(dst)))
    return dst, sorted(folder.glob("part-*.parquet"))[0]


@pytest.mark.ray
def test_random_bytes_in_the_sequence_column_are_named_by_the_read_task(copy):
    from protclip.data.pipeline import sampled_rows

    out, shard = copy
    assert pq.ParquetFile(shard).metadata.num_row_groups >= 2
    _scribble(shard, 1, "sequence")
    cfg = DataConfig(uri=str(out), sampling=SamplingConfig(mode="none"), holdout="hash", verify="off")
    with pytest.raises(Exception) as ei:  # noqa: PT011  (Ray Data's wrapper; the ProtAnno error is inside)
        sampled_rows(cfg, columns=["accession", "sequence"], shuffle=False).take_all()
    err = protanno_error_of(ei.value)
    assert err is not None, ei.value
    assert (Path(err.path).name, err.row_group, err.column) == (shard.name, 1, "sequence")
    line = str(err)
    assert "\n" not in line and shard.name in line and "row group 1, column 'sequence'" in line


def test_invalid_utf8_in_an_uncompressed_page_is_named_not_decoded(uniprot_dat, tmp_path):
    """No decompression error to trip over: only the UTF-8 validation of the read can see this damage."""
    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file

    table = rows_to_table([record_to_row(r) for r in parse_file(uniprot_dat).records[:60]])
    path = tmp_path / "part-00000.parquet"
    pq.write_table(table, path, row_group_size=20, compression="none", use_dictionary=False)
    md = pq.ParquetFile(path).metadata
    col = md.row_group(2).column(md.schema.to_arrow_schema().names.index("sequence"))
    raw = bytearray(path.read_bytes())
    at = col.data_page_offset + col.total_compressed_size // 2
    raw[at:at + 64] = b"\xff\xfe" * 32  # never valid UTF-8, length prefixes untouched
    path.write_bytes(bytes(raw))
    inv = inspect_parquet(str(tmp_path))
    with pytest.raises(ProtAnnoFileError, match=r"row group 2, column 'sequence' is corrupt") as ei:
        read_fragment(inv.fs, inv.fragments[2], ["accession", "sequence"], str(tmp_path))
    assert (ei.value.row_group, ei.value.column) == (2, "sequence")
    assert read_fragment(inv.fs, Fragment(str(path), 1, 20), ["sequence"], str(tmp_path)).num_rows == 20


@pytest.mark.ray
def test_damage_in_an_unread_column_is_caught_by_the_checksum(copy):
    out, shard = copy
    inv = inspect_parquet(str(out))
    assert verify_shards(str(out), mode="full").as_dict()["hashed"] == len(inv.files)
    _scribble(shard, 0, "function")  # the trainer reads accession/sequence/text/property_offsets only
    frag = next(f for f in inspect_parquet(str(out)).fragments if f.path.endswith(shard.name))
    assert read_fragment(inv.fs, frag, ["accession", "sequence", "text", "property_offsets"], str(out)).num_rows
    assert verify_shards(str(out), mode="size").hashed == []  # same size: a size check cannot see it
    for mode in ("full", "sampled"):
        with pytest.raises(ProtAnnoFileError, match=rf"{shard.name}: SHA-256 differs from manifest.json"):
            verify_shards(str(out), mode=mode, sample=16)
    assert verify_shards(str(out), mode="off").skipped


def test_size_mode_finds_missing_truncated_and_foreign_shards(copy):
    """No Ray needed: sizes come from one listing."""
    out, shard = copy
    folder = shard.parent
    gone = sorted(folder.glob("part-*.parquet"))[1]
    gone.unlink()
    shard.write_bytes(shard.read_bytes()[:-100])
    (folder / "part-99999-foreign.parquet").write_bytes(b"PAR1")
    with pytest.raises(ProtAnnoFileError) as ei:
        verify_shards(str(out), mode="size")
    msg = str(ei.value)
    assert msg.startswith("3 shard(s) of ")
    assert f"{shard.name}: {shard.stat().st_size} bytes, manifest.json says {shard.stat().st_size + 100}" in msg
    assert f"{gone.name}: missing" in msg and "part-99999-foreign.parquet: not in manifest.json" in msg
    assert "\n" not in msg


def test_sampled_mode_hashes_a_seeded_subset():
    names = [f"part-{i:05d}.parquet" for i in range(40)]
    a = choose_hashed(names, "sampled", 8, seed=1)
    assert len(a) == 8 and a == choose_hashed(list(reversed(names)), "sampled", 8, seed=1)
    assert choose_hashed(names[:5], "sampled", 8, seed=1) == names[:5]
    assert choose_hashed(names, "full", 8, seed=1) == names and choose_hashed(names, "size", 8, 0) == []


def test_plain_parquet_without_a_manifest_is_not_verified(uniprot_dat, tmp_path):
    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file

    pq.write_table(rows_to_table([record_to_row(r) for r in parse_file(uniprot_dat).records[:5]]),
                   tmp_path / "x.parquet")
    assert "no build manifest" in verify_shards(str(tmp_path), mode="full").skipped
