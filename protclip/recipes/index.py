"""The index job (``jobs/index.py``): an embedding output -> a FAISS index folder (:mod:`protclip.search.index`).

Runs in the driver process (building one index is one process's work; FAISS uses the node's cores). Reads the
shards the manifest lists, builds the exact index (or IVF/HNSW above ``index.approx_above`` vectors), writes it
with its metadata, and logs counts, timings and the index parameters to an MLflow run tagged with the training
run of the model that made the embeddings.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from protclip import storage as st
from protclip.cli import setup_logging
from protclip.config import ConfigError, cli_config
from protclip.search.index import META_FILE, IndexParams, index_from_embeddings, write_index
from protclip.search.shards import read_embeddings
from protclip.storage import StorageConfig
from protclip.tracking import RunLogger, TrackingConfig, open_run, resolve_tracking_uri, secrets_of

_log = logging.getLogger("protclip.index")

__all__ = ["IndexJobConfig", "run_index", "main"]


@dataclass(kw_only=True)
class IndexJobConfig:
    """Root of ``jobs/index.py``."""

    embeddings: str = ""  # an embedding job's output folder (manifest.json + shards/), local or s3://
    output: str = ""  # the index folder to write (index.faiss, rows.parquet, index.json)
    overwrite: bool = False  # replace an existing index; false: an existing index.json is an error
    index: IndexParams = field(default_factory=IndexParams)
    threads: int | None = None  # FAISS threads; None = FAISS's default (all cores)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.embeddings:
            raise ValueError("embeddings must be set (the output folder of jobs/embed.py)")
        if not self.output:
            raise ValueError("output must be set (the index folder to write)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads}")


def run_index(cfg: IndexJobConfig) -> dict[str, Any]:
    """Build and write the index; returns the summary (its metadata, timings, run id)."""
    storage = cfg.storage.resolved()
    fs, root = st.filesystem(cfg.output, storage)
    if fs.exists(posixpath.join(root, META_FILE)) and not cfg.overwrite:
        raise ConfigError(f"output {st.redact(cfg.output)} already holds an index; set overwrite: true to replace it")
    if cfg.threads:
        import faiss

        faiss.omp_set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    emb = read_embeddings(cfg.embeddings, storage)
    t_read = time.perf_counter() - t0
    emb_uri = cfg.embeddings if st.is_remote(cfg.embeddings) else st.filesystem(cfg.embeddings)[1]  # absolute
    idx = index_from_embeddings(emb, cfg.index, emb_uri)
    t0 = time.perf_counter()
    write_index(cfg.output, idx, emb.lengths, storage)
    t_write = time.perf_counter() - t0
    meta = idx.meta
    model = meta.model
    run_id = open_run(cfg.tracking, cfg.tracking.run_name or "index", cfg,
                      tags={"protclip.job": "index", "protclip.training_run_id": model.run_id or "",
                            "protclip.model_checksum": model.checksum, "protclip.manifest_sha256": meta.manifest_sha256,
                            "protclip.embeddings_uri": meta.embeddings_uri})  # fmt: skip
    summary = {"output": st.redact(cfg.output), "run_id": run_id, **asdict(meta),
               "seconds": {"read": round(t_read, 3), "build": meta.build_seconds, "write": round(t_write, 3)}}
    if run_id:
        log = RunLogger(run_id, resolve_tracking_uri(cfg.tracking.uri), secrets_of(cfg))
        log.log_metrics({"index/count": meta.count, "index/dim": meta.dim, "index/read_s": t_read,
                         "index/build_s": meta.build_seconds, "index/write_s": t_write})  # fmt: skip
        log.log_params({f"index_built.{k}": v for k, v in {"type": meta.index_type, **meta.params}.items()})
        log.log_dict(json.loads(json.dumps(asdict(meta))), "index/index.json")
        log.finish()
    return summary


def main(argv: list[str]) -> int:
    """Build a FAISS index over an embedding output.

    usage: python jobs/index.py --config jobs/configs/index.yaml --embeddings DIR --output DIR [--index.type flat|ivf|hnsw]
    (exit 1 = failed, 2 = config error, 3 = storage error)
    """
    setup_logging()
    cfg = cli_config(IndexJobConfig, argv)
    print(st.redact(json.dumps(run_index(cfg), indent=1, default=str)))
    return 0
