"""The embedding job's output: Parquet shards of ``(row, id, description, length, embedding)`` and a manifest.

``row`` is the input position (over all input files, in order): readers sort by it, so the output keeps the
input order however Ray laid out the shards, and "every input exactly once" is checkable.
The manifest (``manifest.json`` beside ``shards/``) says what was embedded with which model (source, weight
checksum, training run, dimension), lists every shard with its row count and size, and reports malformed input
records. Its SHA-256 is what an index records, so an index can always be traced to the exact embedding run and
an index built over a changed or partial output is caught. Pure: pyarrow and fsspec only.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from protclip import storage as st

__all__ = [
    "MANIFEST",
    "SHARDS_DIR",
    "FORMAT_VERSION",
    "ModelInfo",
    "Manifest",
    "Embeddings",
    "embedding_table",
    "write_manifest",
    "read_manifest",
    "read_embeddings",
]

MANIFEST = "manifest.json"
SHARDS_DIR = "shards"
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """Which model made the vectors: enough to load it again and to tell another model apart."""

    source_kind: str  # checkpoint | export | mlflow_export
    source_uri: str  # the folder (or MLflow run id for mlflow_export); credentials redacted
    checksum: str  # SHA-256 over the model's weights (see protclip.search.identity.model_checksum)
    dim: int  # joint-space width (projection_dim)
    run_id: str | None = None  # the pre-training MLflow run, when known
    step: int = 0  # the training step of the weights


@dataclass
class Manifest:
    """What one embedding run wrote (``manifest.json``)."""

    kind: str  # protein | text
    model: ModelInfo
    count: int  # rows over all shards
    shards: list[dict[str, Any]]  # {"path": relative to the output folder, "rows": int, "bytes": int}
    inputs: list[str]  # input files read (redacted URIs)
    n_malformed: int = 0
    malformed_examples: list[str] = field(default_factory=list)  # the first few, one line each
    max_length: int = 0  # residues (proteins) or tokens (texts) inputs were cropped to
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["model"] = ModelInfo(**d["model"])
        return Manifest(**d)


def embedding_table(
    ids: list[str], descriptions: list[str | None], lengths: np.ndarray | list[int], vectors: np.ndarray
) -> pa.Table:
    """The shard schema: ``embedding`` is a ``fixed_size_list<float32>[dim]`` (readable by any Parquet tool)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(ids)} ids")
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "description": pa.array(descriptions, pa.string()),
            "length": pa.array(np.asarray(lengths, dtype=np.int64)),
            "embedding": emb,
        }
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_manifest(output_uri: str, manifest: Manifest, storage: st.StorageConfig | None = None) -> str:
    """Write ``manifest.json`` last (its presence marks a complete output); returns its SHA-256."""
    fs, root = st.filesystem(output_uri, storage)
    data = manifest.to_json().encode()
    with fs.open(posixpath.join(root, MANIFEST), "wb") as f:
        f.write(data)
    return _sha256(data)


def read_manifest(output_uri: str, storage: st.StorageConfig | None = None) -> tuple[Manifest, str]:
    """``(manifest, its SHA-256)`` of an embedding output folder."""
    fs, root = st.filesystem(output_uri, storage)
    path = posixpath.join(root, MANIFEST)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{st.redact(output_uri)}: no {MANIFEST} (not an embedding output, or the embedding job did not finish)"
        )
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        return Manifest.from_dict(json.loads(data)), _sha256(data)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"{st.redact(output_uri)}/{MANIFEST}: not a valid embedding manifest ({e})") from None


@dataclass
class Embeddings:
    """All rows of an embedding output, in manifest (= input) order."""

    ids: list[str]
    descriptions: list[str | None]
    lengths: np.ndarray
    vectors: np.ndarray  # float32 [N, dim]
    manifest: Manifest
    manifest_sha256: str


def read_embeddings(output_uri: str, storage: st.StorageConfig | None = None) -> Embeddings:
    """Read every shard the manifest lists; row counts must match it (a shard changed after the run is an
    error, not a silently different index)."""
    manifest, digest = read_manifest(output_uri, storage)
    fs, root = st.filesystem(output_uri, storage)
    tables = []
    for shard in manifest.shards:
        path = posixpath.join(root, shard["path"])
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=["row", "id", "description", "length", "embedding"])
        if t.num_rows != shard["rows"]:
            raise ValueError(
                f"{st.redact(output_uri)}/{shard['path']}: {t.num_rows} rows, the manifest says {shard['rows']}"
            )
        tables.append(t)
    if not tables:
        raise ValueError(f"{st.redact(output_uri)}: the manifest lists no shards")
    table = pa.concat_tables(tables)
    table = table.take(pa.compute.sort_indices(table.column("row")))  # input order, whatever the shard layout
    if table.num_rows != manifest.count:
        raise ValueError(f"{st.redact(output_uri)}: {table.num_rows} rows, the manifest says {manifest.count}")
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    if dim != manifest.model.dim:
        raise ValueError(f"{st.redact(output_uri)}: embedding width {dim}, the manifest says {manifest.model.dim}")
    vectors = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    return Embeddings(
        ids=table.column("id").to_pylist(),
        descriptions=table.column("description").to_pylist(),
        lengths=table.column("length").to_numpy(),
        vectors=vectors,
        manifest=manifest,
        manifest_sha256=digest,
    )
