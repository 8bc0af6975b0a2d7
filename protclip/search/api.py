"""The Python search API: proteins by function text, and function texts for proteins (zero-shot annotation).

    from protclip.search import Searcher
    s = Searcher("s3://bucket/indexes/proteins")             # the model is the one the index records
    s.search_text(["ATP binding kinase"], k=10)               # -> per text, ranked proteins
    Searcher("indexes/go_terms").annotate_fasta("q.fasta")    # -> per protein, its top-k texts

The model is loaded through :mod:`protclip.pretrained` (from the source ``index.json`` records, or one given),
once, on first use; its weight checksum and dimension must equal the index's, else
:class:`~protclip.search.identity.IndexModelMismatch`: vectors of another model would rank without meaning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from protclip import storage as st
from protclip.eval.config import ModelSourceConfig
from protclip.pretrained import resolve_source
from protclip.search.embedding import LoadedModel, embed_strings, load_embedder
from protclip.search.identity import check_model_matches
from protclip.search.index import SearchIndex, read_index
from protclip.search.readers import read_input

__all__ = ["Searcher", "Query", "source_of_index", "search_text", "annotate_fasta"]

_log = logging.getLogger(__name__)


@dataclass
class Query:
    """One query's results: what was asked (a text, or a protein id) and the ranked hits."""

    query: str
    hits: list[dict[str, Any]]


def source_of_index(idx: SearchIndex) -> ModelSourceConfig:
    """The model source an index records, as the ``source`` section the loader takes."""
    m = idx.meta.model
    if m.source_kind == "mlflow_export":
        return ModelSourceConfig(mlflow_run_id=m.source_uri)
    if m.source_kind == "checkpoint":
        return ModelSourceConfig(checkpoint=m.source_uri)
    return ModelSourceConfig(export=m.source_uri)


class Searcher:
    """An index plus the model that embedded it."""

    def __init__(
        self,
        index: str | SearchIndex,
        *,
        source: ModelSourceConfig | None = None,
        storage: st.StorageConfig | None = None,
        tracking_uri: str | None = None,
        device: str = "auto",
        batch_size: int = 16,
    ) -> None:
        """``source``: the model to embed queries with (default: the one ``index.json`` records);
        ``storage``: access to ``s3://`` indexes and models."""
        self.storage = storage
        self.index = index if isinstance(index, SearchIndex) else read_index(index, storage)
        self.source = source or source_of_index(self.index)
        self.tracking_uri = tracking_uri
        self.device = device
        self.batch_size = batch_size
        self._model: LoadedModel | None = None

    @property
    def model(self) -> LoadedModel:
        """The query model, loaded and checked against the index on first use."""
        if self._model is None:
            resolved = resolve_source(self.source, self.storage, self.tracking_uri)
            loaded = load_embedder(resolved, self.device, dtype="float32")
            m = self.index.meta
            check_model_matches(st.redact(self.index.uri or "(in memory)"), m.dim, m.model.checksum,
                                loaded.info.dim, loaded.info.checksum)  # fmt: skip
            self._model = loaded
        return self._model

    def _require(self, kind: str, call: str) -> None:
        if self.index.meta.kind != kind:
            raise ValueError(
                f"{call} needs an index of {kind} embeddings; {st.redact(self.index.uri)} holds "
                f"{self.index.meta.kind} embeddings"
            )

    def search_text(self, texts: str | list[str], k: int = 10) -> list[Query]:
        """Proteins ranked by cosine similarity to each function text."""
        self._require("protein", "search_text")
        texts = [texts] if isinstance(texts, str) else list(texts)
        vectors = embed_strings(self.model.embedder, texts, "text", self.batch_size)
        return [Query(t, h) for t, h in zip(texts, self.index.hits(vectors, k), strict=True)]

    def annotate(self, ids: list[str], sequences: list[str], k: int = 10) -> list[Query]:
        """The top-k texts (e.g. GO terms) for each protein: zero-shot annotation."""
        self._require("text", "annotate")
        vectors = embed_strings(self.model.embedder, sequences, "protein", self.batch_size)
        return [Query(i, h) for i, h in zip(ids, self.index.hits(vectors, k), strict=True)]

    def annotate_fasta(self, fasta: str, k: int = 10) -> tuple[list[Query], list[str]]:
        """:meth:`annotate` for the records of a FASTA file (path or URI); also returns the malformed records
        skipped (one line each)."""
        res = read_input(fasta, "protein", "fasta", self.storage)
        for err in res.errors:
            _log.warning("skipped malformed record: %s", err)
        if res.table.num_rows == 0:
            raise ValueError(f"{st.redact(fasta)}: no usable FASTA records ({len(res.errors)} malformed)")
        return self.annotate(res.table.column("id").to_pylist(), res.table.column("sequence").to_pylist(), k), res.errors


def search_text(index: str, texts: str | list[str], k: int = 10, **kwargs: Any) -> list[Query]:
    """One-shot :meth:`Searcher.search_text` (loads index and model each call; keep a Searcher for many)."""
    return Searcher(index, **kwargs).search_text(texts, k)


def annotate_fasta(index: str, fasta: str, k: int = 10, **kwargs: Any) -> list[Query]:
    """One-shot :meth:`Searcher.annotate_fasta` (malformed records are logged as warnings)."""
    return Searcher(index, **kwargs).annotate_fasta(fasta, k)[0]
