"""FAISS indexes over joint-space embeddings: build, save with their metadata, load, query.

Vectors are L2-normalised, so inner product is cosine similarity. Below ``approx_above`` vectors the index is
exact (``IndexFlatIP``: a brute-force scan, the reference every approximate index is measured against); above
it, IVF (``IndexIVFFlat``, its coarse quantiser trained on a sample) or HNSW (``IndexHNSWFlat``, no training).
The defaults were chosen to keep recall@10 against the exact index at or above 0.95 (tested on synthetic
vectors; measured in benchmarks/index_benchmark.py).

An index folder holds ``index.faiss``, ``rows.parquet`` (id, description, length of each vector, in index
order) and ``index.json``: the model (source, weight checksum, dimension), count, index type and parameters, and
the SHA-256 of the embedding manifest it was built from. Pure: no Ray.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from protclip import storage as st
from protclip.search.shards import Embeddings, ModelInfo

__all__ = [
    "IndexParams",
    "IndexMeta",
    "SearchIndex",
    "build_index",
    "index_from_embeddings",
    "write_index",
    "read_index",
    "INDEX_FILE",
    "ROWS_FILE",
    "META_FILE",
]

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.parquet"
META_FILE = "index.json"
INDEX_FORMAT_VERSION = 1


@dataclass(kw_only=True)
class IndexParams:
    """How to index (the index job's ``index`` section)."""

    type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto: flat up to approx_above vectors, else approx_type
    # auto switches to an approximate index above this many vectors. Exact search is cheap further out than it
    # looks: 1M x 512-d answers in 7.4 ms/query (batched) on 2 CPU cores and builds in 2 s, where HNSW took
    # 142 s to build at 100k (benchmarks/results/index_cpu_202612.md); Swiss-Prot (570k) stays exact
    approx_above: int = 1_000_000
    approx_type: Literal["ivf", "hnsw"] = "hnsw"  # what auto uses above approx_above (HNSW: best recall/latency;
    # IVF: less memory, faster to build at 10^7+ vectors)
    nlist: int | None = None  # IVF cells; None = 4 * sqrt(N), within [1, N / 39] (FAISS wants >= 39 points a cell)
    nprobe: int | None = None  # IVF cells scanned per query; None = max(16, nlist / 4)
    train_sample: int = 200_000  # IVF: vectors the quantiser is trained on (a seeded uniform sample)
    hnsw_m: int = 32  # HNSW: links per node
    ef_construction: int = 200  # HNSW: build-time candidate list
    ef_search: int = 128  # HNSW: query-time candidate list (>= k)
    seed: int = 0  # the training sample

    def __post_init__(self) -> None:
        if self.type not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"index.type must be auto|flat|ivf|hnsw, got {self.type!r}")
        if self.approx_type not in ("ivf", "hnsw"):
            raise ValueError(f"index.approx_type must be ivf|hnsw, got {self.approx_type!r}")
        for name in ("approx_above", "train_sample", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"index.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("nlist", "nprobe"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"index.{name} must be >= 1 or null, got {v}")

    def chosen_type(self, n: int) -> str:
        if self.type != "auto":
            return self.type
        return "flat" if n <= self.approx_above else self.approx_type


@dataclass
class IndexMeta:
    """``index.json``: what the index holds and how it was made."""

    kind: str  # what the vectors embed: protein | text
    model: ModelInfo
    dim: int
    count: int
    index_type: str  # flat | ivf | hnsw
    params: dict[str, Any]  # the effective parameters (nlist, nprobe, M, ef...)
    embeddings_uri: str  # the embedding output it was built from (redacted)
    manifest_sha256: str  # SHA-256 of that output's manifest.json
    build_seconds: float = 0.0
    format_version: int = INDEX_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> IndexMeta:
        d = dict(d)
        d["model"] = ModelInfo(**d["model"])
        return IndexMeta(**d)


def _ivf_sizes(n: int, p: IndexParams) -> tuple[int, int]:
    nlist = p.nlist or int(round(4 * math.sqrt(n)))
    nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
    nprobe = p.nprobe or max(16, nlist // 4)
    return nlist, min(nprobe, nlist)


def build_index(vectors: np.ndarray, params: IndexParams) -> tuple[Any, str, dict[str, Any]]:
    """``(faiss index, type, effective parameters)`` over ``vectors`` ``[N, dim]`` float32 (rows = positions)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty [N, dim] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or inf")
    n, dim = x.shape
    kind = params.chosen_type(n)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        eff: dict[str, Any] = {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        eff = {"hnsw_m": params.hnsw_m, "ef_construction": params.ef_construction, "ef_search": params.ef_search}
    else:
        nlist, nprobe = _ivf_sizes(n, params)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(params.seed)
        m = min(n, params.train_sample)
        sample = x if m == n else x[np.sort(rng.choice(n, size=m, replace=False))]
        index.cp.seed = params.seed
        index.train(sample)
        index.nprobe = nprobe
        eff = {"nlist": nlist, "nprobe": nprobe, "train_sample": m, "seed": params.seed}
    index.add(x)
    return index, kind, eff


def _apply_search_params(index: Any, meta: IndexMeta) -> None:
    """nprobe / efSearch are not all kept by serialisation: set them from the metadata on load."""
    import faiss

    if meta.index_type == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(meta.params["nprobe"])
    elif meta.index_type == "hnsw":
        index.hnsw.efSearch = int(meta.params["ef_search"])


@dataclass
class SearchIndex:
    """A loaded index with its rows and metadata."""

    index: Any
    ids: list[str]
    descriptions: list[str | None]
    meta: IndexMeta
    uri: str = ""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, positions)``, each ``[Q, k']`` with ``k' = min(k, count)``, best first; a position of -1
        (only possible for approximate indexes) means fewer than k' hits were found."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.meta.dim:
            raise ValueError(f"queries of shape {q.shape}; the index holds {self.meta.dim}-dimensional vectors")
        return self.index.search(q, min(k, self.meta.count))

    def hits(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Per query, the ranked ``{"rank", "id", "score", "description"}`` records."""
        scores, pos = self.search(queries, k)
        out = []
        for srow, prow in zip(scores, pos, strict=True):
            out.append([
                {"rank": r + 1, "id": self.ids[p], "score": float(s), "description": self.descriptions[p]}
                for r, (s, p) in enumerate(zip(srow, prow, strict=True)) if p >= 0
            ])  # fmt: skip
        return out


def index_from_embeddings(emb: Embeddings, params: IndexParams, embeddings_uri: str) -> SearchIndex:
    """Build the index of an embedding output, with its metadata."""
    t0 = time.perf_counter()
    index, kind, eff = build_index(emb.vectors, params)
    meta = IndexMeta(
        kind=emb.manifest.kind,
        model=emb.manifest.model,
        dim=int(emb.vectors.shape[1]),
        count=int(emb.vectors.shape[0]),
        index_type=kind,
        params=eff,
        embeddings_uri=st.redact(embeddings_uri),
        manifest_sha256=emb.manifest_sha256,
        build_seconds=round(time.perf_counter() - t0, 3),
    )
    return SearchIndex(index, emb.ids, emb.descriptions, meta)


def write_index(out_uri: str, idx: SearchIndex, lengths: np.ndarray, storage: st.StorageConfig | None = None) -> None:
    """Write the three files; ``index.json`` last, so its presence marks a complete index."""
    import faiss

    fs, root = st.filesystem(out_uri, storage)
    fs.makedirs(root, exist_ok=True)
    with fs.open(posixpath.join(root, INDEX_FILE), "wb") as f:
        f.write(faiss.serialize_index(idx.index).tobytes())
    rows = pa.table({"id": pa.array(idx.ids, pa.string()), "description": pa.array(idx.descriptions, pa.string()),
                     "length": pa.array(np.asarray(lengths, dtype=np.int64))})  # fmt: skip
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    with fs.open(posixpath.join(root, ROWS_FILE), "wb") as f:
        f.write(buf.getvalue())
    with fs.open(posixpath.join(root, META_FILE), "w") as f:
        f.write(json.dumps(asdict(idx.meta), indent=1, sort_keys=True))


def read_index(uri: str, storage: st.StorageConfig | None = None) -> SearchIndex:
    """Load an index folder (local path or URI)."""
    import faiss

    fs, root = st.filesystem(uri, storage)
    meta_path = posixpath.join(root, META_FILE)
    if not fs.exists(meta_path):
        raise FileNotFoundError(f"{st.redact(uri)}: no {META_FILE} (not an index folder, or the index job did not finish)")
    with fs.open(meta_path, "r") as f:
        try:
            meta = IndexMeta.from_dict(json.load(f))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ValueError(f"{st.redact(uri)}/{META_FILE}: not a valid index description ({e})") from None
    with fs.open(posixpath.join(root, INDEX_FILE), "rb") as f:
        index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    with fs.open(posixpath.join(root, ROWS_FILE), "rb") as f:
        rows = pq.read_table(f)
    if index.ntotal != meta.count or rows.num_rows != meta.count or index.d != meta.dim:
        raise ValueError(
            f"{st.redact(uri)}: index holds {index.ntotal} x {index.d}, rows {rows.num_rows}, "
            f"{META_FILE} says {meta.count} x {meta.dim}"
        )
    _apply_search_params(index, meta)
    return SearchIndex(index, rows.column("id").to_pylist(), rows.column("description").to_pylist(), meta, uri)
