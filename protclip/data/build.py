"""The distributed ProtAnno build: raw UniProtKB files in any storage -> versioned Parquet shards + manifest.

Pipeline (Ray Data, streaming; nothing is collected on one node):

1. ``UniProtRawDatasource`` cuts every input into units of raw records. A plain ``.dat`` is split into
   record-aligned byte ranges (one read task each, found by seeking, not by scanning the file); a ``.dat.gz``
   cannot be seeked, so one read task streams it and yields blocks of about ``chunk_bytes`` of raw records as it
   goes, never the whole file. TSV exports are read per file.
2. ``map_batches(ParseBlock)`` parses the raw records on all CPUs into ProtAnno rows; malformed entries become
   error rows (file, byte offset, line, accession, reason) instead of exceptions.
3. ``ProtAnnoSink`` writes the good rows as Parquet shards (optionally after the ``once`` sampling of the paper,
   i.e. ProtAnno-D) and returns per-shard statistics and the error rows to the driver, which writes
   ``manifest.json`` and ``malformed.jsonl``. Counts always add up: parsed + malformed (+ sampled out) = seen.
   An input file that yields no entry at all (empty, FASTA, stray text) fails the build, naming the file.
4. The held-out split is a global step: one Ray task reads accession + sequence back from the shards, clusters
   them with MMseqs2 (``build.holdout``), assigns whole clusters to train / val / test and writes
   ``_holdout.parquet``; the driver records the split in the manifest (:mod:`protclip.data.holdout`).
5. Everything above is written into a new version folder ``<output>/v-<time>-<id>/``; only when it is complete
   does the driver publish it by writing ``<output>/manifest.json`` (the pointer: the version's manifest plus
   ``"version"``) last, in one atomic step (rename on local disk, one PUT on S3). A failed build never touches
   the published version; the previous version is kept and older ones are removed (``build.keep_versions``).
   Readers resolve the pointer (:func:`protclip.data.parquet_files.resolve_protanno`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from protclip import storage
from protclip.data.holdout import (
    HoldoutConfig,
    make_holdout,
    read_protanno_manifest,
    sequences_from_tables,
    write_holdout,
)
from protclip.data.mmseqs import find_mmseqs, mmseqs_version
from protclip.data.parquet_files import ProtAnnoFileError, resolve_protanno
from protclip.data.sampling import SamplingConfig, keep_mask
from protclip.data.schema import PROTANNO_SCHEMA, SCHEMA_VERSION, record_to_row
from protclip.data.uniprot import (
    MalformedRecord,
    RawRecord,
    UniProtRecord,
    find_record_boundaries,
    iter_raw_records,
    iter_record_batches,
    iter_tsv_records,
    parse_raw_batch,
)
from protclip.paths import resolve_shared

_log = logging.getLogger(__name__)

RAW_SCHEMA = pa.schema([("source", pa.string()), ("offset", pa.int64()), ("line", pa.int64()),
                        ("data", pa.binary()), ("terminated", pa.bool_()), ("error", pa.string())])
ERROR_FIELDS = ("source", "byte_offset", "line", "accession", "reason")
_ERROR_SCHEMA = pa.schema([("source", pa.string()), ("byte_offset", pa.int64()), ("line", pa.int64()),
                           ("accession", pa.string()), ("reason", pa.string())])


@dataclass(kw_only=True)
class BuildConfig:
    """What to build and where. ``inputs`` are files, folders or glob patterns on any supported storage."""

    inputs: list[str] = field(default_factory=list)  # e.g. ["s3://uniprot/uniprot_sprot.dat.gz"]
    output: str = "outputs/protanno"  # folder/prefix for part-*.parquet, manifest.json, malformed.jsonl
    chunk_bytes: int = 32 << 20  # raw bytes per parse unit (plain .dat byte range / .gz block)
    # Parquet shard size target: fewer, larger files scale better on S3, but the write task holds a whole shard
    # in memory (its rows plus their sorted and encoded copies). Peak memory of a build task in
    # benchmarks/build_scale_benchmark.py: 3.1 GiB at 25,000 rows, 4.0 GiB at 50,000, 7.9 GiB at 200,000
    rows_per_shard: int = 25_000
    row_group_rows: int = 20_000  # Parquet row group = the training pipeline's read/shuffle unit; keep it small
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(mode="none"))  # "once" = ProtAnno-D
    overwrite: bool = False  # refuse to publish into a non-empty output unless set (the old version stays until
    # the new one is complete, then the pointer moves; nothing is deleted before that)
    keep_versions: int = 2  # published versions kept under the output (current + previous); older ones removed
    verify_crc: bool = True  # check the SQ-line CRC64 (cheap; catches corrupted sequences)
    max_malformed_fraction: float = 1.0  # fail the job (after writing the report) above this share
    # the held-out split written next to the shards (_holdout.parquet + manifest block); clusters by default
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)

    def __post_init__(self) -> None:
        if isinstance(self.holdout, dict):  # tolerate plain dicts (e.g. BuildConfig(**yaml_section))
            self.holdout = HoldoutConfig(**self.holdout)
        if self.chunk_bytes < 4096:
            raise ValueError("chunk_bytes must be >= 4096")
        if self.rows_per_shard < 1:
            raise ValueError("rows_per_shard must be >= 1")
        if self.row_group_rows < 1:
            raise ValueError("row_group_rows must be >= 1")
        if self.sampling.mode == "per_epoch":
            raise ValueError("sampling.mode 'per_epoch' is a training-time mode; use 'once' or 'none' at build time")
        if not 0.0 <= self.max_malformed_fraction <= 1.0:
            raise ValueError("max_malformed_fraction must be within [0, 1]")
        if self.keep_versions < 1:
            raise ValueError("build.keep_versions must be >= 1 (the published version itself)")


class BuildInputError(ProtAnnoFileError):
    """An input file of the build is unusable (empty, or nothing in it is a UniProt entry); names the file."""


# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputFile:
    uri: str  # as given/expanded, with scheme
    size: int
    kind: str  # "dat", "dat.gz", "tsv", "tsv.gz"


def _kind(path: str, head: bytes) -> str:
    low = path.lower()
    gz = head[:2] == b"\x1f\x8b" or low.endswith(".gz")
    base = low[:-3] if low.endswith(".gz") else low
    tsv = base.endswith((".tsv", ".tab"))
    return ("tsv" if tsv else "dat") + (".gz" if gz else "")


def list_inputs(patterns: list[str], cfg: storage.StorageConfig | None = None) -> list[InputFile]:
    """Expand files / folders / globs into a sorted list of input files (error if a pattern matches nothing)."""
    out: list[InputFile] = []
    for pat in map(resolve_shared, patterns):
        fs, prefix, matches = storage.expand_files(pat, cfg)
        if matches is None:
            raise storage.StorageError(f"input not found: {pat}")
        if not matches:
            raise storage.StorageError(f"input pattern matched no files: {pat}")
        for m in matches:
            with fs.open(m, "rb") as f:
                head = f.read(2)
            out.append(InputFile(prefix + m, int(fs.size(m)), _kind(m, head)))
    return out


# ----------------------------------------------------------------------------------------------- reading


def _raw_table(raws: list[RawRecord], source: str) -> pa.Table:
    return pa.table(
        {"source": [source] * len(raws), "offset": [r.offset for r in raws], "line": [r.line for r in raws],
         "data": [r.data for r in raws], "terminated": [r.terminated for r in raws],
         "error": [r.error for r in raws]},
        schema=RAW_SCHEMA,
    )


def _open(uri: str, cfg: storage.StorageConfig | None):
    fs, path = storage.filesystem(uri, cfg)
    return fs.open(path, "rb")


def _read_dat_range(uri: str, start: int, end: int, cfg, chunk_bytes: int) -> Iterator[pa.Table]:
    with _open(uri, cfg) as f:
        f.seek(start)
        batch: list[RawRecord] = []
        size = 0
        line = 1 if start == 0 else None
        for raw in iter_raw_records(f, start_offset=start, start_line=line, max_bytes=end - start):
            batch.append(raw)
            size += len(raw.data)
            if size >= chunk_bytes:
                yield _raw_table(batch, uri)
                batch, size = [], 0
        if batch:
            yield _raw_table(batch, uri)


def _read_gz_stream(uri: str, cfg, chunk_bytes: int) -> Iterator[pa.Table]:
    import gzip

    with _open(uri, cfg) as raw_f, gzip.GzipFile(fileobj=raw_f, mode="rb") as f:
        for batch in iter_record_batches(f, batch_bytes=chunk_bytes):
            yield _raw_table(batch, uri)


def _read_tsv(uri: str, cfg) -> Iterator[pa.Table]:
    """TSV exports are parsed in the read task itself (rows are one line each; no split step needed)."""
    import gzip

    with _open(uri, cfg) as raw_f:
        f = gzip.GzipFile(fileobj=raw_f, mode="rb") if uri.lower().endswith(".gz") else raw_f
        buf: list[Any] = []
        for res in iter_tsv_records(f, uri):
            buf.append(res)
            if len(buf) >= 20_000:
                yield _results_table(buf, [uri] * len(buf))
                buf = []
        if buf:
            yield _results_table(buf, [uri] * len(buf))


class UniProtRawDatasource:
    """Ray Data datasource yielding raw record blocks (or parsed blocks for TSV) from UniProt inputs."""

    def __init__(self, files: list[InputFile], cfg: storage.StorageConfig | None, chunk_bytes: int) -> None:
        self.files = files
        self.cfg = cfg
        self.chunk_bytes = chunk_bytes
        self.units = self._plan()

    def _plan(self) -> list[tuple[str, InputFile, int, int]]:
        units: list[tuple[str, InputFile, int, int]] = []
        for fi in self.files:
            if fi.kind == "dat" and fi.size > self.chunk_bytes:
                with _open(fi.uri, self.cfg) as f:
                    starts = find_record_boundaries(f, self.chunk_bytes)
                bounds = sorted(set([0, *starts])) + [fi.size]
                units += [("dat", fi, s, e) for s, e in zip(bounds[:-1], bounds[1:], strict=True) if e > s]
            elif fi.kind == "dat":
                units.append(("dat", fi, 0, fi.size))
            elif fi.kind == "dat.gz":
                units.append(("gz", fi, 0, fi.size))
            else:
                units.append(("tsv", fi, 0, fi.size))
        return units

    def as_ray_datasource(self):
        """Build the ``ray.data.Datasource`` subclass lazily so this module stays importable without Ray."""
        from ray.data.block import BlockMetadata
        from ray.data.datasource import Datasource, ReadTask

        outer = self

        class _DS(Datasource):
            def estimate_inmemory_data_size(self) -> int | None:
                return sum(fi.size for fi in outer.files)

            def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
                tasks = []
                for kind, fi, s, e in outer.units:
                    meta = BlockMetadata(num_rows=None, size_bytes=e - s, exec_stats=None, input_files=[fi.uri])
                    if kind == "dat":
                        fn = _bind(_read_dat_range, fi.uri, s, e, outer.cfg, outer.chunk_bytes)
                    elif kind == "gz":
                        fn = _bind(_read_gz_stream, fi.uri, outer.cfg, outer.chunk_bytes)
                    else:
                        fn = _bind(_read_tsv, fi.uri, outer.cfg)
                    tasks.append(ReadTask(fn, meta))
                return tasks

            def get_name(self) -> str:
                return "UniProtRaw"

        return _DS()


def _bind(fn, *args):
    def read() -> Iterable[pa.Table]:
        return fn(*args)

    return read


# ----------------------------------------------------------------------------------------------- parsing

_ROW_FIELDS = [f.name for f in PROTANNO_SCHEMA]
# ``_source``: the input file of every result, so the driver can tell an input that yielded nothing
RESULT_SCHEMA = pa.schema(list(PROTANNO_SCHEMA) + [pa.field("_error", pa.struct(list(_ERROR_SCHEMA))),
                                                   pa.field("_source", pa.string())])


def _results_table(results: list[UniProtRecord | MalformedRecord], sources: list[str]) -> pa.Table:
    """Parsed results -> one table: good rows in the ProtAnno columns, bad ones in ``_error`` only."""
    cols: dict[str, list[Any]] = {n: [] for n in _ROW_FIELDS}
    errors: list[dict[str, Any] | None] = []
    for res in results:
        if isinstance(res, MalformedRecord):
            for n in _ROW_FIELDS:
                cols[n].append(None)
            errors.append({k: getattr(res, k) for k in ERROR_FIELDS})
        else:
            row = record_to_row(res)
            for n in _ROW_FIELDS:
                cols[n].append(row.get(n))
            errors.append(None)
    arrays = [pa.array(cols[f.name], type=f.type) for f in PROTANNO_SCHEMA]
    arrays.append(pa.array(errors, type=RESULT_SCHEMA.field("_error").type))
    arrays.append(pa.array(sources, type=pa.string()))
    return pa.Table.from_arrays(arrays, schema=RESULT_SCHEMA)


class ParseBlock:
    """``map_batches`` callable: raw record table -> result table (TSV blocks arrive already parsed)."""

    def __init__(self, verify_crc: bool = True) -> None:
        self.verify_crc = verify_crc

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "_error" in batch.column_names:  # TSV: parsed in the read task
            return batch
        d = batch.to_pydict()
        by_source: dict[str, list[RawRecord]] = {}
        for src, off, line, data, term, err in zip(d["source"], d["offset"], d["line"], d["data"], d["terminated"],
                                                   d["error"], strict=True):
            by_source.setdefault(src, []).append(RawRecord(off, line, data, term, err))
        results: list[UniProtRecord | MalformedRecord] = []
        sources: list[str] = []
        for src, raws in by_source.items():  # one raw record may yield several results (glued entries)
            parsed = parse_raw_batch(raws, src, self.verify_crc)
            results += parsed
            sources += [src] * len(parsed)
        return _results_table(results, sources)


def _parse_batch(batch: pa.Table, verify_crc: bool = True) -> pa.Table:
    return ParseBlock(verify_crc)(batch)


# ----------------------------------------------------------------------------------------------- writing


def _shard_stats(table: pa.Table) -> dict[str, Any]:
    """Row count and the (reviewed, PE, k) histogram of a table of good rows."""
    if table.num_rows == 0:
        return {"rows": 0, "hist": {}}
    rev = table.column("reviewed").to_numpy(zero_copy_only=False)
    pe = table.column("protein_existence").to_numpy(zero_copy_only=False)
    k = table.column("n_properties").to_numpy(zero_copy_only=False)
    hist = Counter(f"{'sp' if r else 'tr'}|{int(p)}|{int(kk)}" for r, p, kk in zip(rev, pe, k, strict=True))
    return {"rows": table.num_rows, "hist": dict(hist)}


def _hash_order(accessions: list[str]) -> pa.Array:
    keys = [hashlib.blake2b(a.encode(), digest_size=8).digest() for a in accessions]
    return pa.array(sorted(range(len(keys)), key=keys.__getitem__), type=pa.int64())


class ProtAnnoSink:
    """Writes good rows as Parquet shards; returns stats + error rows to the driver (no side files)."""

    def __init__(self, output: str, cfg: storage.StorageConfig | None, sampling: SamplingConfig,
                 rows_per_shard: int, row_group_rows: int = 20_000) -> None:
        self.row_group_rows = row_group_rows
        self.output = output
        self.cfg = cfg
        self.sampling = sampling
        self.rows_per_shard = rows_per_shard

    def write_blocks(self, blocks: Iterable[pa.Table], task_index: int) -> dict[str, Any]:
        tables = [b for b in blocks if b.num_rows]
        result: dict[str, Any] = {"files": [], "errors": [], "seen": 0, "parsed": 0, "sampled_out": 0,
                                  "sampled_out_hist": {}, "hist": {}, "parsed_by_source": {}}
        if not tables:
            return result
        t = pa.concat_tables(tables)
        del tables
        result["seen"] = t.num_rows
        is_err = pa.compute.is_valid(t.column("_error"))
        bad = t.filter(is_err).column("_error")
        good = t.filter(pa.compute.invert(is_err)).drop_columns(["_error"])
        del t  # the unfiltered rows are not needed past here: the task's peak memory follows the shard size
        counts = good.column("_source").value_counts().to_pylist()
        result["parsed_by_source"] = {c["values"]: c["counts"] for c in counts}
        good = good.drop_columns(["_source"])
        result["errors"] = bad.to_pylist()
        result["parsed"] = good.num_rows
        good = good.cast(PROTANNO_SCHEMA)
        if self.sampling.mode == "once" and good.num_rows:
            mask = keep_mask(good.column("reviewed").to_numpy(zero_copy_only=False),
                             good.column("protein_existence").to_numpy(zero_copy_only=False),
                             good.column("n_properties").to_numpy(zero_copy_only=False),
                             np.asarray(good.column("accession").to_pylist(), dtype=object),
                             self.sampling, epoch=0)
            dropped = good.filter(pa.array(~mask))
            result["sampled_out"] = dropped.num_rows
            result["sampled_out_hist"] = _shard_stats(dropped)["hist"]
            good = good.filter(pa.array(mask))
        result["hist"] = _shard_stats(good)["hist"]
        if good.num_rows:
            fs, base = storage.filesystem(self.output, self.cfg)
            name = f"part-{task_index:05d}-{uuid.uuid4().hex[:8]}.parquet"
            buf = io.BytesIO()
            meta = dict(good.schema.metadata or {})
            meta[b"protclip.schema_version"] = SCHEMA_VERSION.encode()
            # Rows in hashed-accession order: UniProt dumps are sorted by entry name, so neighbouring rows are
            # related; hashing spreads them so a row-group shuffle plus a small buffer mixes well.
            good = good.take(_hash_order(good.column("accession").to_pylist()))
            pq.write_table(good.replace_schema_metadata(meta), buf, compression="zstd",
                           row_group_size=self.row_group_rows)
            n_rows = good.num_rows
            del good
            data = buf.getbuffer()
            path = f"{base}/{name}"
            tmp = f"{base}/_tmp.{name}"
            with fs.open(tmp, "wb") as f:  # write then move: a crashed task never leaves a readable partial shard
                f.write(data)
            fs.mv(tmp, path)
            result["files"].append({"name": name, "rows": n_rows, "bytes": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()})
        return result

    def as_ray_datasink(self):
        from ray.data.datasource import Datasink

        outer = self

        class _Sink(Datasink):
            def __init__(self) -> None:
                self.results: list[dict[str, Any]] = []

            def write(self, blocks, ctx) -> dict[str, Any]:
                return outer.write_blocks(blocks, getattr(ctx, "task_idx", 0))

            def on_write_complete(self, write_result) -> None:
                self.results = list(write_result.write_returns)

            @property
            def min_rows_per_write(self) -> int | None:
                return outer.rows_per_shard

            def get_name(self) -> str:
                return "ProtAnno"

        return _Sink()


# ----------------------------------------------------------------------------------------------- held-out split


def compute_holdout(output: str, shard_names: list[str], cfg: HoldoutConfig,
                    storage_cfg: storage.StorageConfig | None) -> dict[str, Any]:
    """The global clustering step (one Ray task): read accession + sequence of the written shards, cluster,
    assign whole clusters to splits, write ``_holdout.parquet``; returns the manifest's ``holdout`` block."""
    import gzip

    fs, base = storage.filesystem(output, storage_cfg)
    tables = []
    for name in sorted(shard_names):
        with fs.open(f"{base}/{name}", "rb") as f:
            tables.append(pq.read_table(f, columns=["accession", "sequence"] if cfg.needs_mmseqs else ["accession"]))
    seqs, rows = sequences_from_tables(tables)
    if cfg.clusters_tsv is None:
        table, info = make_holdout(seqs, cfg, rows_per_accession=rows)
    else:
        with _open(cfg.clusters_tsv, storage_cfg) as raw:
            binary = gzip.GzipFile(fileobj=raw, mode="rb") if cfg.clusters_tsv.lower().endswith(".gz") else raw
            table, info = make_holdout(seqs, cfg, rows_per_accession=rows,
                                       clusters_tsv_lines=io.TextIOWrapper(binary, encoding="utf-8"))
    return info | write_holdout(output, table, storage_cfg)


def _preflight_mmseqs() -> str:
    """Where the clustering task will run: the binary exists and starts (fails before hours of parsing)."""
    return mmseqs_version(find_mmseqs())


def _ray_get(ref: Any) -> Any:
    """``ray.get`` that re-raises a task's own error (setup problems stay one clear line, not a traceback)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


# ----------------------------------------------------------------------------------------------- driver


@dataclass
class BuildResult:
    manifest: dict[str, Any]  # as published (the pointer: the version's manifest + "version")
    errors: list[dict[str, Any]]
    version_uri: str = ""  # the version folder holding the shards, reports and the held-out split


def _prepare_version(output: str, cfg, overwrite: bool) -> str:
    """Check the output, create a fresh version folder in it and return its URI; never deletes anything."""
    fs, path = storage.filesystem(output, cfg)
    storage.check_access(output, cfg, write=True)
    if fs.exists(path):
        existing = [p for p in fs.ls(path, detail=False) if not os.path.basename(p).startswith(".")]
        if existing and not overwrite:
            raise storage.StorageError(
                f"output {output} is not empty ({len(existing)} entries); set build.overwrite=true or pick a new folder")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"
    fs.makedirs(f"{path.rstrip('/')}/{name}", exist_ok=True)
    return storage.join(output, name)


#: version folders are named ``v-<UTC time>-<random>``: sortable by time, unique across concurrent builds
VERSION_PREFIX = "v-"
_FASTA_HINT = "this looks like FASTA (a '>' header line); the build reads UniProtKB flat files (.dat) or TSV exports"


def describe_content(head: bytes) -> str:
    """What the first bytes of an input look like, for the error about an input without any UniProt entry."""
    text = head.lstrip()
    if not text:
        return "it is empty or only whitespace"
    if text.startswith(b">"):
        return _FASTA_HINT
    if head.startswith(b"PAR1"):
        return "this looks like a Parquet file (give it as data.uri, not as a build input)"
    if text.startswith((b"<?xml", b"<uniprot", b"<!DOCTYPE", b"<html")):
        return "this looks like XML/HTML; the build reads UniProtKB flat files (.dat) or TSV exports"
    if text.startswith((b"{", b"[")):
        return "this looks like JSON; the build reads UniProtKB flat files (.dat) or TSV exports"
    if b"\x00" in head[:4096]:
        return "this looks like binary data, not a UniProtKB flat file"
    first = text.split(b"\n", 1)[0][:60].decode("utf-8", "replace")
    return f"no line starts with 'ID   ' (it begins {first!r}); not a UniProtKB flat file"


def _head(uri: str, cfg, n: int = 4096) -> bytes:
    import gzip
    import zlib

    with _open(uri, cfg) as f:
        raw = f.read(n)
    if raw[:2] == b"\x1f\x8b":
        try:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, n)
        except (zlib.error, gzip.BadGzipFile) as e:
            return f"<unreadable gzip: {e}>".encode()
    return raw


def check_inputs(files: list[InputFile], cfg) -> None:
    """Before any Ray work: an empty file or a FASTA file among the inputs is an error naming the file."""
    for fi in files:
        if fi.size == 0:
            raise BuildInputError(f"build input {storage.redact(fi.uri)} is empty (0 bytes)")
        if fi.kind.startswith("dat"):
            head = _head(fi.uri, cfg)
            if head.lstrip().startswith(b">") or head.startswith(b"PAR1") or not head.strip():
                raise BuildInputError(f"build input {storage.redact(fi.uri)} holds no UniProt entry: "
                                      f"{describe_content(head)}")


_NOT_AN_ENTRY = ("stray text", "empty record", "binary", "not utf-8", "no id line")


def check_every_input_parsed(files: list[InputFile], results: list[dict[str, Any]],
                             errors: list[dict[str, Any]], cfg) -> None:
    """After parsing: every input must yield at least one entry (an input that yields none is a wrong file)."""
    parsed: Counter[str] = Counter()
    for r in results:
        parsed.update(r.get("parsed_by_source", {}))
    bad_by_source: Counter[str] = Counter(e["source"] for e in errors)
    for fi in files:
        if parsed[fi.uri]:
            continue
        n_bad = bad_by_source[fi.uri]
        reasons = {e["reason"].lower() for e in errors if e["source"] == fi.uri}
        if n_bad and not all(any(k in r for k in _NOT_AN_ENTRY) for r in reasons):
            what = f"all {n_bad} of its entries are malformed (see malformed.jsonl of the failed version)"
        else:
            what = describe_content(_head(fi.uri, cfg))
        raise BuildInputError(f"build input {storage.redact(fi.uri)}: no UniProt entry parsed ({n_bad} problem(s) "
                              f"reported): {what}")


def run_build(cfg: BuildConfig, storage_cfg: storage.StorageConfig | None = None) -> BuildResult:
    """Build into a new version folder and publish it atomically; returns the manifest.

    On any failure the published version (if any) stays as it was; the unpublished folder is removed, except
    when the malformed share is too high (its ``malformed.jsonl`` is kept for inspection and named).
    """
    import ray

    t0 = time.time()
    storage_cfg = (storage_cfg or storage.StorageConfig()).resolved()
    files = list_inputs(cfg.inputs, storage_cfg)
    check_inputs(files, storage_cfg)
    version_uri = _prepare_version(cfg.output, storage_cfg, cfg.overwrite)
    keep_failed = False
    try:
        if cfg.holdout.needs_mmseqs:
            _ray_get(ray.remote(num_cpus=0)(_preflight_mmseqs).remote())
        source = UniProtRawDatasource(files, storage_cfg, cfg.chunk_bytes)
        sink = ProtAnnoSink(version_uri, storage_cfg, cfg.sampling, cfg.rows_per_shard, cfg.row_group_rows)
        ds = ray.data.read_datasource(source.as_ray_datasource(), override_num_blocks=max(1, len(source.units)))
        ds = ds.map_batches(_parse_batch, fn_kwargs={"verify_crc": cfg.verify_crc}, batch_format="pyarrow",
                            batch_size=None)
        ray_sink = sink.as_ray_datasink()
        ds.write_datasink(ray_sink)
        results = ray_sink.results
        manifest, errors = summarise(cfg, files, results, time.time() - t0)
        check_every_input_parsed(files, results, errors, storage_cfg)
        holdout: dict[str, Any] = {"mode": "none"}
        if cfg.holdout.mode != "none":
            names = [f["name"] for r in results for f in r["files"]]
            task = ray.remote(num_cpus=cfg.holdout.threads)(compute_holdout)
            holdout = _ray_get(task.remote(version_uri, names, cfg.holdout, storage_cfg))
        manifest["holdout"] = holdout
        manifest["seconds"] = round(time.time() - t0, 2)
        _write_reports(version_uri, storage_cfg, manifest, errors)
        if manifest["seen"] and manifest["malformed"] / manifest["seen"] > cfg.max_malformed_fraction:
            keep_failed = True
            raise BuildInputError(
                f"{manifest['malformed']} of {manifest['seen']} records malformed "
                f"(> {cfg.max_malformed_fraction:.1%}); nothing published; see "
                f"{storage.redact(storage.join(version_uri, 'malformed.jsonl'))}")
    except BaseException:
        if not keep_failed:
            _remove_quietly(version_uri, storage_cfg)
        raise
    manifest = publish(cfg.output, version_uri, manifest, storage_cfg)
    removed = collect_garbage(cfg.output, storage_cfg, cfg.keep_versions)
    _log.info("ProtAnno build: %d rows in %d shards, %d malformed records, %.1f s; published %s (removed %d old "
              "version(s))", manifest["rows"], len(manifest["shards"]), manifest["malformed"], manifest["seconds"],
              manifest["version"], len(removed))
    if holdout["mode"] != "none":
        _log.info("held-out split (%s): %d clusters; clusters %s; rows %s; %.1f s", holdout["mode"],
                  holdout["n_clusters"], holdout["clusters"], holdout["rows"], holdout["seconds"])
    return BuildResult(manifest, errors, version_uri)


def _remove_quietly(uri: str, cfg) -> None:
    """Remove an unpublished version folder; a failure to clean up is logged, never hides the build's error."""
    fs, path = storage.filesystem(uri, cfg)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError as e:
        _log.warning("could not remove the unpublished build folder %s: %s", storage.redact(uri), e)


def _write_atomic(fs: Any, path: str, text: str) -> None:
    """One object appears complete or not at all: rename on local disk; one PUT on object stores."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, text.encode("utf-8"))


def publish(output: str, version_uri: str, manifest: dict[str, Any], cfg) -> dict[str, Any]:
    """Point ``<output>/manifest.json`` at the finished version: the last write of a build."""
    fs, base = storage.filesystem(output, cfg)
    old = read_protanno_manifest(output, cfg)
    previous = None if old is None else old.get("version", "")  # "": a flat, pre-versioning build
    pointer = manifest | {"version": version_uri.rstrip("/").rsplit("/", 1)[-1], "previous_version": previous}
    _write_atomic(fs, f"{base.rstrip('/')}/manifest.json", json.dumps(pointer, indent=2))
    return pointer


def collect_garbage(output: str, cfg, keep: int) -> list[str]:
    """Remove versions beyond the newest ``keep`` published ones (unpublished/failed folders included).

    The published version and, with ``keep >= 2``, the one it replaced are never removed. A pre-versioning
    (flat) build counts as the previous version: its shards and reports are removed once it falls out.
    """
    fs, base = storage.filesystem(output, cfg)
    base = base.rstrip("/")
    pointer = read_protanno_manifest(output, cfg) or {}
    current, previous = pointer.get("version"), pointer.get("previous_version")
    keep_names = [current] + ([previous] if keep >= 2 and previous is not None else [])
    entries = fs.ls(base, detail=True)
    versions = sorted((os.path.basename(e["name"].rstrip("/")) for e in entries
                       if e["type"] == "directory" and os.path.basename(e["name"].rstrip("/")).startswith(
                           VERSION_PREFIX)), reverse=True)
    published_older = [v for v in versions if v not in keep_names]
    removed: list[str] = []
    for v in published_older:
        fs.rm(f"{base}/{v}", recursive=True)
        removed.append(v)
    if "" not in keep_names:  # a flat, pre-versioning build left at the top level
        flat = [e["name"] for e in entries if e["type"] == "file" and os.path.basename(e["name"]).endswith(
            (".parquet", ".jsonl"))]
        for path in flat:
            fs.rm(path)
        if flat:
            removed.append("(flat build)")
    return removed


def summarise(cfg: BuildConfig, files: list[InputFile], results: list[dict[str, Any]],
              seconds: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fold the sink's per-task results into the manifest (counts must add up; asserted here)."""
    hist: Counter[str] = Counter()
    sampled_out_hist: Counter[str] = Counter()
    shards: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen = parsed = sampled_out = 0
    for r in results:
        hist.update(r["hist"])
        sampled_out_hist.update(r["sampled_out_hist"])
        shards += r["files"]
        errors += r["errors"]
        seen += r["seen"]
        parsed += r["parsed"]
        sampled_out += r["sampled_out"]
    rows = sum(s["rows"] for s in shards)
    if parsed + len(errors) != seen or rows + sampled_out != parsed:
        raise RuntimeError(f"build accounting mismatch: seen={seen} parsed={parsed} malformed={len(errors)} "
                           f"written={rows} sampled_out={sampled_out}")
    errors.sort(key=lambda e: (e["source"], e["byte_offset"]))
    shards.sort(key=lambda s: s["name"])
    reasons = Counter(e["reason"].split(":")[0] for e in errors)

    def nested(h: Counter[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, n in sorted(h.items()):
            src, pe, k = key.split("|")
            out.setdefault(f"{src}_pe{pe}", {})[f"k{k}"] = n
        return out

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created_unix": int(time.time()),
        "inputs": [{"uri": storage.redact(f.uri), "bytes": f.size, "kind": f.kind} for f in files],
        "seen": seen,
        "parsed": parsed,
        "malformed": len(errors),
        "malformed_by_reason": dict(reasons),
        "sampling": {"mode": cfg.sampling.mode, "seed": cfg.sampling.seed, "sampled_out": sampled_out,
                     "sampled_out_pe_k": nested(sampled_out_hist)},
        "rows": rows,
        "pe_k_histogram": nested(hist),
        "shards": shards,
        "checksum": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest(),
        "seconds": round(seconds, 2),
    }
    return manifest, errors


def _write_reports(output: str, cfg, manifest: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    fs, base = storage.filesystem(output, cfg)
    with fs.open(f"{base}/malformed.jsonl", "w") as f:
        for e in errors:
            f.write(json.dumps(e) + "\n")
    with fs.open(f"{base}/manifest.json", "w") as f:  # the version's own manifest (the pointer comes later)
        f.write(json.dumps(manifest, indent=2))


def read_manifest(output: str, cfg: storage.StorageConfig | None = None) -> dict[str, Any]:
    """The published manifest of a ProtAnno output (error when none was published)."""
    manifest = read_protanno_manifest(output, cfg)
    if manifest is None:
        raise storage.StorageError(f"{output} has no manifest.json: not a complete ProtAnno build")
    return manifest


def published_folder(output: str, cfg: storage.StorageConfig | None = None) -> str:
    """The folder holding the published shards of ``output`` (its version folder; itself for flat builds)."""
    return resolve_protanno(output, cfg)
