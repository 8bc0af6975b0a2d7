"""The ProtAnno held-out split: its config, how it is computed from sequences, its file, and how readers use it.

The build writes ``_holdout.parquet`` (accession, cluster, split) next to the shards and a ``holdout`` block in
``manifest.json``. The leading underscore keeps the file out of every shard listing (this project's, Ray Data's
and pyarrow's datasets skip ``_``-prefixed files), so a ProtAnno folder stays a plain Parquet dataset. Training
(:mod:`protclip.data.pipeline`) and evaluation (:func:`load_split_rows`) read the split from here, so the rows
held out at build time are the rows evaluated. Pure: no Ray import.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from protclip import storage
from protclip.data import mmseqs
from protclip.data.clusters import SPLITS, assign_splits, parse_cluster_tsv, seal, split_counts

HOLDOUT_FILE = "_holdout.parquet"
HOLDOUT_SCHEMA = pa.schema([("accession", pa.string()), ("cluster", pa.string()), ("split", pa.string())])


class HoldoutError(ValueError):
    """The held-out split is missing, inconsistent with the shards, or asked for where there is none."""


@dataclass(kw_only=True)
class HoldoutConfig:
    """How the build holds proteins out (the ``build.holdout`` section)."""

    # "clusters": whole MMseqs2 clusters go to one split (homology-aware; needs `mmseqs`);
    # "hash": each accession on its own by a hash (no mmseqs; near-identical proteins can straddle splits);
    # "none": no held-out file (training falls back to data.val_fraction)
    mode: Literal["clusters", "hash", "none"] = "clusters"
    min_seq_id: float = 0.3  # sequences aligning at >= this identity (and the coverage below) share a cluster
    coverage: float = 0.8  # minimum aligned fraction (mmseqs -c), of both sequences with cov_mode 0
    cov_mode: int = 0  # mmseqs --cov-mode: 0 both, 1 target, 2 query (3-5: length-ratio rules)
    val_fraction: float = 0.05  # expected share of clusters held out for validation
    test_fraction: float = 0.1  # expected share of clusters held out for the test set
    seed: int = 0  # the split of a cluster is a hash of (seed, representative)
    threads: int = 1  # mmseqs --threads of the one clustering task (the task reserves as many CPUs)
    linclust: bool = False  # mmseqs easy-linclust (linear time, less sensitive below ~50% identity; large sets)
    # search held-out vs train after the assignment and move held-out clusters with a hit to train, so no held-out
    # sequence has a training homologue at the thresholds; off only where an all-held-out search is too costly
    seal: bool = True
    # precomputed membership instead of clustering, "cluster<TAB>accession" per line (UniRef50/90 from UniProt's
    # id mapping, or an mmseqs *_cluster.tsv); accessions it lacks become singletons (counted in the manifest)
    clusters_tsv: str | None = None

    def __post_init__(self) -> None:
        where = "build.holdout"
        if self.mode not in ("clusters", "hash", "none"):
            raise ValueError(f"{where}.mode must be 'clusters', 'hash' or 'none', got {self.mode!r}")
        if not 0.0 < self.min_seq_id <= 1.0:
            raise ValueError(f"{where}.min_seq_id must be in (0, 1], got {self.min_seq_id}")
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"{where}.coverage must be in [0, 1], got {self.coverage}")
        if self.cov_mode not in range(6):
            raise ValueError(f"{where}.cov_mode must be 0..5 (mmseqs --cov-mode), got {self.cov_mode}")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{where}.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"{where}.val_fraction + {where}.test_fraction must be < 1, got "
                             f"{self.val_fraction + self.test_fraction}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"{where}.seed must be in [0, 2**63), got {self.seed}")
        if self.threads < 1:
            raise ValueError(f"{where}.threads must be >= 1, got {self.threads}")
        if self.clusters_tsv is not None and self.mode != "clusters":
            raise ValueError(f"{where}.clusters_tsv needs {where}.mode 'clusters', got {self.mode!r}")

    @property
    def needs_mmseqs(self) -> bool:
        return self.mode == "clusters" and (self.clusters_tsv is None or self.seal)


# ---------------------------------------------------------------------------------------------- computing


def make_holdout(sequences: Mapping[str, str], cfg: HoldoutConfig, *, rows_per_accession: Mapping[str, int] | None = None,
                 clusters_tsv_lines: Any = None) -> tuple[pa.Table, dict[str, Any]]:
    """``{accession: sequence}`` -> the holdout table (sorted by accession) and the manifest block's numbers."""
    if cfg.mode == "none":
        raise HoldoutError("build.holdout.mode is 'none': there is no held-out split to compute")
    t0 = time.time()
    info: dict[str, Any] = {"mode": cfg.mode, "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
                            "seed": cfg.seed}
    if cfg.mode == "hash":
        rep_of = {a: a for a in sequences}
    else:
        info |= {"min_seq_id": cfg.min_seq_id, "coverage": cfg.coverage, "cov_mode": cfg.cov_mode,
                 "threads": cfg.threads, "seal": cfg.seal}
        binary = mmseqs.find_mmseqs() if cfg.needs_mmseqs else None
        if binary is not None:
            info["mmseqs_version"] = mmseqs.mmseqs_version(binary)
        if cfg.clusters_tsv is not None:
            given = parse_cluster_tsv(clusters_tsv_lines or [], cfg.clusters_tsv)
            info["clusters_tsv"] = storage.redact(cfg.clusters_tsv)
            info["accessions_missing_from_clusters_tsv"] = sum(a not in given for a in sequences)
            rep_of = {a: given.get(a, a) for a in sequences}
        else:
            info["algorithm"] = "easy-linclust" if cfg.linclust else "easy-cluster"
            rep_of = mmseqs.easy_cluster(sequences, min_seq_id=cfg.min_seq_id, coverage=cfg.coverage,
                                         cov_mode=cfg.cov_mode, threads=cfg.threads, linclust=cfg.linclust,
                                         binary=binary)
        info["cluster_seconds"] = round(time.time() - t0, 2)
    split_of = assign_splits(rep_of, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if cfg.mode == "clusters" and cfg.seal:
        search = partial(mmseqs.easy_search, min_seq_id=cfg.min_seq_id, coverage=cfg.coverage,
                         cov_mode=cfg.cov_mode, threads=cfg.threads, binary=binary)
        split_of, moved, rounds = seal(split_of, rep_of, sequences, search)
        info |= {"sealed_clusters_moved_to_train": moved, "seal_rounds": rounds}
    info["n_clusters"] = len(set(rep_of.values()))
    info |= split_counts(split_of, rep_of, rows_per_accession)
    info["seconds"] = round(time.time() - t0, 2)
    accs = sorted(split_of)
    table = pa.table({"accession": accs, "cluster": [rep_of[a] for a in accs], "split": [split_of[a] for a in accs]},
                     schema=HOLDOUT_SCHEMA)
    return table, info


def sequences_from_tables(tables: list[pa.Table]) -> tuple[dict[str, str], dict[str, int]]:
    """(accession -> sequence, accession -> rows) from ProtAnno tables; a duplicate accession keeps its
    lexicographically smallest sequence, so the result does not depend on shard order. Tables without a
    ``sequence`` column (no alignment needed: hash mode, precomputed clusters) give empty sequences."""
    seqs: dict[str, str] = {}
    rows: Counter[str] = Counter()
    for t in tables:
        accs = t.column("accession").to_pylist()
        col = t.column("sequence").to_pylist() if "sequence" in t.column_names else [""] * len(accs)
        for acc, seq in zip(accs, col, strict=True):
            rows[acc] += 1
            if acc not in seqs or seq < seqs[acc]:
                seqs[acc] = seq
    return seqs, dict(rows)


def write_holdout(output: str, table: pa.Table, storage_cfg: storage.StorageConfig | None = None) -> dict[str, Any]:
    """Write ``_holdout.parquet`` into the ProtAnno folder; returns its name, rows and sha256."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    fs, base = storage.filesystem(output, storage_cfg)
    with fs.open(f"{base}/_tmp{HOLDOUT_FILE}", "wb") as f:  # write then move: never a readable partial file
        f.write(data)
    fs.mv(f"{base}/_tmp{HOLDOUT_FILE}", f"{base}/{HOLDOUT_FILE}")
    return {"file": HOLDOUT_FILE, "accessions": table.num_rows, "sha256": hashlib.sha256(data).hexdigest()}


# ---------------------------------------------------------------------------------------------- reading


def read_protanno_manifest(uri: str, storage_cfg: storage.StorageConfig | None = None) -> dict[str, Any] | None:
    """The ``manifest.json`` at the top of a ProtAnno folder (the published pointer of a versioned build, or a
    pre-versioning build's manifest), or None when there is none: readers and the build's publish step share it."""
    fs, base = storage.filesystem(uri, storage_cfg)
    path = f"{base.rstrip('/')}/manifest.json"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def read_holdout(uri: str, storage_cfg: storage.StorageConfig | None = None) -> pa.Table:
    """The ProtAnno folder's holdout table, checked against the sha256 its manifest recorded."""
    from protclip.data.parquet_files import resolve_protanno

    uri = resolve_protanno(uri, storage_cfg)  # a versioned build: the published version folder
    manifest = read_protanno_manifest(uri, storage_cfg)
    block = (manifest or {}).get("holdout")
    if not block or block.get("mode") == "none":
        raise HoldoutError(f"{storage.redact(uri)}: no held-out split (no 'holdout' block in manifest.json; "
                           f"rebuild with build.holdout.mode clusters or hash)")
    fs, base = storage.filesystem(uri, storage_cfg)
    path = f"{base.rstrip('/')}/{block['file']}"
    if not fs.exists(path):
        raise HoldoutError(f"{storage.redact(uri)}: manifest.json lists {block['file']}, which is missing")
    with fs.open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != block["sha256"]:
        raise HoldoutError(f"{storage.redact(uri)}/{block['file']}: sha256 differs from manifest.json (the file was "
                           f"replaced after the build; rebuild the ProtAnno folder)")
    table = pq.read_table(io.BytesIO(data))
    if not table.schema.equals(HOLDOUT_SCHEMA):
        raise HoldoutError(f"{storage.redact(uri)}/{block['file']}: schema {table.schema} is not {HOLDOUT_SCHEMA}")
    return table


def split_accessions(table: pa.Table, split: str) -> pa.Array:
    """The accessions of one split, as an Arrow array (cheap to ship to read tasks and to test with is_in)."""
    if split not in SPLITS:
        raise HoldoutError(f"split must be one of {SPLITS}, got {split!r}")
    return table.filter(pc.equal(table["split"], split))["accession"].combine_chunks()


def check_covers_shards(uri: str, manifest: dict[str, Any], shard_files: list[dict[str, Any]]) -> None:
    """The shards on storage must be the ones the holdout was computed from (same names and row counts)."""
    have = {str(f["path"]).rsplit("/", 1)[-1]: int(f["rows"]) for f in shard_files}
    built = {s["name"]: int(s["rows"]) for s in manifest.get("shards", [])}
    if have != built:
        extra = sorted(set(have) - set(built))[:3]
        missing = sorted(set(built) - set(have))[:3]
        raise HoldoutError(f"{storage.redact(uri)}: the Parquet shards differ from the build that made the held-out "
                           f"split (extra {extra}, missing {missing}, or other row counts); the split is stale, "
                           f"rebuild the folder")


def load_split_rows(uri: str, split: str | None, columns: list[str] | None = None,
                    storage_cfg: storage.StorageConfig | None = None) -> pa.Table:
    """The ProtAnno rows of one split (``None``: all rows), only ``columns`` (default: all), sorted by accession."""
    from protclip.data.parquet_files import inspect_parquet, open_input

    inv = inspect_parquet(uri, storage_cfg)
    wanted = None
    if split is not None:
        manifest = read_protanno_manifest(uri, storage_cfg) or {}
        wanted = split_accessions(read_holdout(uri, storage_cfg), split)
        check_covers_shards(uri, manifest, inv.files)
    read_cols = None if columns is None else list(dict.fromkeys(["accession", *columns]))
    parts = []
    for f in inv.files:
        with open_input(inv.fs, f["path"]) as fh:
            t = pq.read_table(fh, columns=read_cols)
        if wanted is not None:
            t = t.filter(pc.is_in(t["accession"], value_set=wanted))
        parts.append(t.replace_schema_metadata(None))
    out = pa.concat_tables(parts)
    out = out.take(pc.sort_indices(out, sort_keys=[("accession", "ascending")]))
    return out if columns is None else out.select(columns)


# ---------------------------------------------------------------------------------------------- training side


def resolve_training_split(data_cfg: Any, shard_files: list[dict[str, Any]],
                           storage_cfg: storage.StorageConfig | None = None) -> tuple[Any, dict[str, Any]]:
    """Which split the training pipeline uses (``data.holdout``): the build's, or the accession hash.

    Returns the :class:`~protclip.data.stages.BuildSplit` (None for the hash split) and the pipeline manifest's
    ``holdout`` record. A build split whose shards changed since the build is an error here, before any Ray work.
    """
    from protclip.data.stages import BuildSplit

    hash_info = {"source": "hash", "val_fraction": data_cfg.val_fraction, "val_seed": data_cfg.val_seed}
    if data_cfg.holdout == "hash":
        return None, hash_info
    manifest = read_protanno_manifest(data_cfg.uri, storage_cfg)
    block = (manifest or {}).get("holdout") or {}
    if block.get("mode", "none") == "none":
        if data_cfg.holdout == "build":
            raise HoldoutError(f"data.holdout is 'build' but {storage.redact(data_cfg.uri)} has no held-out split "
                               f"(not a ProtAnno build folder, or built with build.holdout.mode none); set "
                               f"data.holdout hash or rebuild")
        return None, hash_info
    assert manifest is not None
    table = read_holdout(data_cfg.uri, storage_cfg)
    check_covers_shards(data_cfg.uri, manifest, shard_files)
    split = BuildSplit(val=split_accessions(table, "val"), test=split_accessions(table, "test"))
    info = {"source": "build", "mode": block["mode"], "sha256": block["sha256"], "clusters": block["clusters"],
            "rows": block["rows"]}
    info |= {k: block[k] for k in ("min_seq_id", "coverage", "cov_mode", "mmseqs_version") if k in block}
    return split, info


def check_heldout_rows(uri: str, found: Mapping[str, int], info: Mapping[str, Any], complete: bool) -> None:
    """The shards' rows in the build's val / test sets must match the manifest (fewer only when footer
    statistics let the pipeline skip row groups, ``complete=False``)."""
    for name in ("val", "test"):
        want, got = int(info["rows"][name]), int(found.get(name, 0))
        if got > want or (complete and got != want):
            raise HoldoutError(f"{storage.redact(uri)}: {got} shard rows are in the held-out {name} split, the "
                               f"build recorded {want}; the split does not match the shards (stale), rebuild")
