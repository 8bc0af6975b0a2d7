"""The embedding job (``jobs/embed.py``): proteins or texts -> joint-space vectors, with Ray Data batch inference.

Assembly: the driver resolves the model source once (checkpoint, export or MLflow run, through
:mod:`protclip.pretrained`) and checksums its weights; one Ray task per input file parses it
(:mod:`protclip.search.readers`; malformed records are collected, not dropped silently) and numbers its rows;
``map_batches`` with a callable-class actor pool embeds them (each actor loads the model once; ``num_gpus`` per
actor and bf16 on GPU clusters; inside a batch the embedder sorts by length and cuts by a token budget); Ray
Data writes the Parquet shards; the driver checks every input row came out exactly once, then writes
``manifest.json`` (:mod:`protclip.search.shards`) and logs counts and timings to an MLflow run tagged with the
training run of the model.
"""

from __future__ import annotations

import json
import logging
import posixpath
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from protclip import runtime  # before anything imports ray: loopback binding for local runs
from protclip import storage as st
from protclip.cli import EXIT_FAILED, setup_logging
from protclip.config import ConfigError, cli_config
from protclip.eval.config import ModelSourceConfig, resolve_data_path
from protclip.pretrained import ModelSource, resolve_source
from protclip.recipes.build_protanno import RayConfig
from protclip.search.readers import KINDS, PROTEIN_FORMATS, TEXT_FORMATS, list_inputs
from protclip.search.shards import MANIFEST, SHARDS_DIR, Manifest, ModelInfo, write_manifest
from protclip.storage import StorageConfig
from protclip.tracking import RunLogger, TrackingConfig, open_run, resolve_tracking_uri, secrets_of

_log = logging.getLogger("protclip.embed")

__all__ = ["InputConfig", "EmbedConfig", "run_embed", "main"]

#: malformed records named in the manifest and the summary (all are counted)
MAX_REPORTED = 50


@dataclass(kw_only=True)
class InputConfig:
    """What to embed."""

    uri: str = ""  # a file, a folder (every file in it) or a glob; local, "shared:<path>" or s3://...
    kind: Literal["protein", "text"] = "protein"  # proteins (protein tower) or function texts (text tower)
    # proteins: fasta | uniprot (.dat/.dat.gz) | parquet (ProtAnno); texts: parquet (ProtAnno `text`) | obo (GO
    # term name: definition) | tsv (id<TAB>text) | lines (one statement a line); auto = by file extension
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)  # Parquet: {id, description, content} column names
    on_error: Literal["skip", "raise"] = "skip"  # malformed records: skip and report them, or fail the job

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("input.uri must be set (a file, folder or glob of proteins or texts)")
        if self.kind not in KINDS:
            raise ValueError(f"input.kind must be one of {KINDS}, got {self.kind!r}")
        allowed = ("auto", *(PROTEIN_FORMATS if self.kind == "protein" else TEXT_FORMATS))
        if self.format not in allowed:
            raise ValueError(f"input.format for {self.kind}s must be one of {allowed}, got {self.format!r}")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"input.on_error must be skip|raise, got {self.on_error!r}")
        bad = sorted(set(self.columns) - {"id", "description", "content"})
        if bad:
            raise ValueError(f"input.columns: unknown keys {bad} (id, description, content)")


@dataclass(kw_only=True)
class EmbedConfig:
    """Root of ``jobs/embed.py``."""

    input: InputConfig = field(default_factory=InputConfig)
    source: ModelSourceConfig = field(default_factory=ModelSourceConfig)  # the trained model: one of three
    output: str = ""  # output folder (local or s3://): shards/ + manifest.json
    overwrite: bool = False  # replace an existing output; false: an existing manifest.json is an error
    workers: int = 1  # actors embedding in parallel (each holds one model copy)
    num_cpus: float = 1.0  # per actor (CPU clusters: also its torch threads)
    num_gpus: float = 0.0  # per actor; e.g. 1 on GPU clusters (then bf16 by default)
    device: str = "auto"  # torch device inside an actor: auto = cuda when it was given a GPU
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    rows_per_batch: int = 512  # at most this many rows handed to an actor at once (fewer for small inputs, so
    # that each actor gets at least 4 batches)
    batch_size: int = 64  # at most this many sequences a forward pass ...
    max_tokens_per_batch: int = 16384  # ... and at most this many padded tokens (token-budget batches)
    rows_per_shard: int = 50_000  # at least this many rows per output file (fewer in the last)
    storage: StorageConfig = field(default_factory=StorageConfig)  # access to s3:// inputs, models and output
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not self.output:
            raise ValueError("output must be set (a folder or s3:// prefix for shards/ and manifest.json)")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus must be > 0 and num_gpus >= 0, got {self.num_cpus}/{self.num_gpus}")
        for name in ("rows_per_batch", "batch_size", "max_tokens_per_batch", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")



class EmbedActor:
    """One model copy per actor: the Ray Data callable class of the embedding stage."""

    def __init__(self, source: ModelSource, checksum: str, kind: str, device: str, dtype: str, batch_size: int,
                 max_tokens: int, num_threads: int) -> None:  # fmt: skip
        import torch

        from protclip.search.embedding import load_embedder

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        self.loaded = load_embedder(source, device, dtype, max_tokens)
        if self.loaded.info.checksum != checksum:  # the source changed under the running job
            raise RuntimeError(f"{source.describe()}: the weights differ from those the driver checksummed")
        self.kind, self.batch_size = kind, batch_size

    def __call__(self, batch: Any) -> Any:
        from protclip.search.embedding import embed_table

        out = embed_table(self.loaded.embedder, batch, self.kind, self.batch_size)  # type: ignore[arg-type]
        return out.add_column(0, "row", batch.column("row"))


def batch_plan(n_rows: int, max_rows_per_batch: int, workers: int) -> tuple[int, int]:
    """(batches, rows per batch) for ``n_rows`` inputs: at most ``max_rows_per_batch`` rows each and at least 4
    batches per actor (as inputs allow), so that no actor idles while another ends the job.

    Ray Data bundles blocks up to ``batch_size`` rows, so the batch must shrink with the blocks: 500 rows in one
    512-row batch kept one of 2 actors busy (1.29x a single process instead of 1.61x;
    benchmarks/results/embed_cpu_202612.md).
    """
    n_batches = max(1, -(-n_rows // max_rows_per_batch), min(n_rows, 4 * workers))
    return n_batches, max(1, -(-n_rows // n_batches))


def _parse_file(uri: str, kind: str, fmt: str, storage: StorageConfig, columns: dict[str, str]) -> tuple[Any, list[str], int]:
    from protclip.search.readers import read_input

    res = read_input(uri, kind, fmt, storage, columns or None)  # type: ignore[arg-type]
    return res.table, res.errors, res.table.num_rows


def _number_rows(table: Any, offset: int) -> Any:
    import numpy as np
    import pyarrow as pa

    return table.add_column(0, "row", pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64)))


def _read_inputs(cfg: EmbedConfig, files: list[str], storage: StorageConfig) -> tuple[list[Any], int, list[str]]:
    """One Ray task per file: ``(table refs with a global row column, total rows, malformed records)``."""
    import ray

    parse = ray.remote(num_returns=3)(_parse_file)
    number = ray.remote(_number_rows)
    tables, errors = [], []
    pending = [parse.options(name=f"parse:{posixpath.basename(f)}").remote(f, cfg.input.kind, cfg.input.format, storage,
                                                                           cfg.input.columns) for f in files]  # fmt: skip
    for table_ref, err_ref, _ in pending:
        errors.extend(ray.get(err_ref))
        tables.append(table_ref)
    counts = ray.get([p[2] for p in pending])
    if errors and cfg.input.on_error == "raise":
        raise ValueError(f"malformed input record ({len(errors)} in all): {errors[0]}")
    offsets = [sum(counts[:i]) for i in range(len(counts))]
    numbered = [number.remote(t, o) for t, o, c in zip(tables, offsets, counts, strict=True) if c]
    return numbered, sum(counts), errors


def _prepare_output(cfg: EmbedConfig, storage: StorageConfig) -> tuple[Any, str]:
    fs, root = st.filesystem(cfg.output, storage)
    if fs.exists(posixpath.join(root, MANIFEST)) and not cfg.overwrite:
        raise ConfigError(f"output {st.redact(cfg.output)} already holds an embedding run; set overwrite: true to replace it")
    shards = posixpath.join(root, SHARDS_DIR)
    if fs.exists(shards):
        fs.rm(shards, recursive=True)
    if fs.exists(posixpath.join(root, MANIFEST)):
        fs.rm(posixpath.join(root, MANIFEST))
    fs.makedirs(shards, exist_ok=True)
    return fs, root


def _collect_shards(fs: Any, root: str, n_rows: int) -> tuple[list[dict[str, Any]], int]:
    """The shard list (ordered by first row) after checking every input row appears exactly once and ids are
    unique; returns ``(shards, count)``."""
    import numpy as np
    import pyarrow.parquet as pq

    shards, seen_rows, ids = [], [], []
    for path in sorted(fs.find(posixpath.join(root, SHARDS_DIR))):
        if not path.endswith(".parquet"):
            continue
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["row", "id"])
        rows = t.column("row").to_numpy()
        rel = posixpath.relpath(path, root)
        shards.append({"path": rel, "rows": t.num_rows, "bytes": int(fs.size(path)),
                       "first_row": int(rows.min()) if len(rows) else -1})  # fmt: skip
        seen_rows.append(rows)
        ids.extend(t.column("id").to_pylist())
    rows = np.concatenate(seen_rows) if seen_rows else np.zeros(0, np.int64)
    counts = np.bincount(rows, minlength=n_rows) if len(rows) else np.zeros(n_rows, np.int64)
    if len(counts) != n_rows or (counts != 1).any():
        missing, twice = int((counts[:n_rows] == 0).sum()), int((counts > 1).sum())
        raise RuntimeError(f"embedding output has {len(rows)} rows for {n_rows} inputs ({missing} missing, {twice} repeated)")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"input id {dup!r} appears in more than one input record (ids must be unique across files)")
    shards = sorted((s for s in shards if s["rows"]), key=lambda s: s["first_row"])
    return [{k: v for k, v in s.items() if k != "first_row"} for s in shards], len(rows)


def run_embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed and write; returns the summary (output, count, malformed, timings, run id)."""
    import ray

    from protclip.search.embedding import load_embedder

    t_start = time.perf_counter()
    storage = cfg.storage.resolved()
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    source = resolve_source(cfg.source, storage, tracking_uri)
    probe = load_embedder(source, "cpu", "float32")  # checksum and dimension, once, on the driver
    info: ModelInfo = probe.info
    max_len = probe.max_protein_residues if cfg.input.kind == "protein" else probe.max_text_tokens
    del probe
    in_uri = resolve_data_path(cfg.input.uri)
    files = list_inputs(in_uri, storage)
    fs, root = _prepare_output(cfg, storage)
    run_id = open_run(cfg.tracking, cfg.tracking.run_name or "embed", cfg,
                      tags={"protclip.job": "embed", "protclip.training_run_id": source.run_id or "",
                            "protclip.model_source": source.describe(),
                            "protclip.model_checksum": info.checksum})  # fmt: skip
    runtime.init_ray(num_cpus=cfg.ray.num_cpus, address=cfg.ray.address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    t0 = time.perf_counter()
    refs, n_input, errors = _read_inputs(cfg, files, storage)
    t_read = time.perf_counter() - t0
    for e in errors[:20]:
        _log.warning("skipped malformed record: %s", e)
    if n_input == 0:
        raise ValueError(f"input {st.redact(in_uri)}: no usable records ({len(errors)} malformed)")
    t0 = time.perf_counter()
    # one block per input file: cut it so that every actor gets work (order is kept)
    n_batches, rows_per_batch = batch_plan(n_input, cfg.rows_per_batch, cfg.workers)
    ds = ray.data.from_arrow_refs(refs).repartition(n_batches)
    threads = max(1, int(cfg.num_cpus)) if cfg.num_gpus == 0 else 0
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"source": source, "checksum": info.checksum, "kind": cfg.input.kind,
                               "device": cfg.device, "dtype": cfg.dtype, "batch_size": cfg.batch_size,
                               "max_tokens": cfg.max_tokens_per_batch, "num_threads": threads},
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
    )  # fmt: skip
    pa_fs, shards_path = st.pyarrow_filesystem(st.join(cfg.output, SHARDS_DIR), storage)
    ds.write_parquet(shards_path, filesystem=pa_fs, min_rows_per_file=cfg.rows_per_shard)
    t_embed = time.perf_counter() - t0
    shards, count = _collect_shards(fs, root, n_input)
    manifest = Manifest(kind=cfg.input.kind, model=info, count=count, shards=shards,
                        inputs=[st.redact(f) for f in files], n_malformed=len(errors),
                        malformed_examples=errors[:MAX_REPORTED], max_length=max_len)  # fmt: skip
    digest = write_manifest(cfg.output, manifest, storage)
    total = time.perf_counter() - t_start
    summary = {"output": st.redact(cfg.output), "kind": cfg.input.kind, "count": count, "shards": len(shards),
               "n_malformed": len(errors), "malformed_examples": errors[:5], "manifest_sha256": digest,
               "model": asdict(info), "run_id": run_id,
               "seconds": {"read": round(t_read, 3), "embed_write": round(t_embed, 3), "total": round(total, 3)},
               "rows_per_second": round(count / t_embed, 2) if t_embed > 0 else None}  # fmt: skip
    if run_id:
        log = RunLogger(run_id, tracking_uri, secrets_of(cfg))
        log.log_metrics({"embed/count": count, "embed/malformed": len(errors), "embed/shards": len(shards),
                         "embed/read_s": t_read, "embed/embed_write_s": t_embed, "embed/total_s": total,
                         "embed/rows_per_s": summary["rows_per_second"] or 0.0})  # fmt: skip
        log.log_dict(json.loads(manifest.to_json()), "embed/manifest.json")
        log.set_tags({"protclip.embeddings_uri": st.redact(cfg.output), "protclip.manifest_sha256": digest})
        log.finish()
    return summary


def main(argv: list[str]) -> int:
    """Embed proteins (FASTA, UniProt .dat(.gz), ProtAnno Parquet) or texts with a trained ProtCLIP model.

    usage: python jobs/embed.py --config jobs/configs/embed.yaml --source.export DIR --input.uri X --output Y
    (see jobs/configs/embed.yaml; exit 1 = failed, 2 = config error, 3 = storage error)
    """
    setup_logging()
    cfg = cli_config(EmbedConfig, argv)
    try:
        summary = run_embed(cfg)
    except ConfigError:
        raise
    except ValueError as e:  # malformed input the job cannot go on with (message names file/record/field)
        print(f"error: {st.redact(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    print(st.redact(json.dumps(summary, indent=1, default=str)))
    return 0
