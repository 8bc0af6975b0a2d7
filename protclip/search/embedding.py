"""Embedding a batch of inputs with a trained ProtCLIP model, exactly as the evaluation suites do.

The vectors come from :class:`~protclip.eval.protclip_embedder.ProtCLIPEmbedder` (joint space: the trained
tokenisation, crop lengths, pooling, projection head and L2 norm), so an index built from the embedding job's
shards ranks exactly as the retrieval suite does. Within a batch the embedder sorts by length and cuts by a token
budget (little padding); the returned rows stay in input order. Used by the Ray Data actors of the embedding job
and by the search API; no Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from protclip.eval.protclip_embedder import ProtCLIPEmbedder
from protclip.pretrained import ModelSource, load_model
from protclip.search.identity import model_checksum
from protclip.search.readers import content_column
from protclip.search.shards import ModelInfo, embedding_table
from protclip.storage import redact

__all__ = ["LoadedModel", "load_embedder", "resolve_dtype", "embed_table", "embed_strings"]

DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class LoadedModel:
    """A ready embedder and the identity of the weights behind it."""

    embedder: ProtCLIPEmbedder
    info: ModelInfo
    max_protein_residues: int
    max_text_tokens: int


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA (half the memory traffic, tensor cores), float32 on CPU (bf16 matmuls are slow
    on most CPUs and would move the vectors away from the evaluation suites')."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_embedder(
    source: ModelSource, device: str = "auto", dtype: str = "auto", max_tokens_per_batch: int | None = 16384
) -> LoadedModel:
    """Load the model once (one per Ray actor), checksum its weights as loaded, then cast for inference."""
    from protclip.dist import resolve_device

    model, info = load_model(source)
    checksum = model_checksum(model)
    dev = resolve_device(device)
    model = model.to(dtype=resolve_dtype(dtype, dev))
    embedder = ProtCLIPEmbedder(model, device=dev, max_tokens_per_batch=max_tokens_per_batch,
                                text_tokenizer=info["text_tokenizer"], data_cfg=info["data_cfg"])  # fmt: skip
    ident = ModelInfo(
        source_kind=source.kind,
        source_uri=redact(source.uri),
        checksum=checksum,
        dim=int(model.cfg.projection_dim),
        run_id=source.run_id,
        step=int(source.step),
    )
    return LoadedModel(embedder, ident, embedder.tower.max_residues, embedder.max_text_length)


def embed_strings(embedder: ProtCLIPEmbedder, items: list[str], kind: Literal["protein", "text"],
                  batch_size: int) -> np.ndarray:  # fmt: skip
    """Joint-space vectors ``[N, dim]`` float32, L2-normalised, in input order."""
    if kind == "protein":
        return embedder.embed_proteins(items, batch_size)
    return embedder.embed_texts(items, batch_size)


def embed_table(embedder: ProtCLIPEmbedder, table: pa.Table, kind: Literal["protein", "text"],
                batch_size: int) -> pa.Table:  # fmt: skip
    """An input table (``id``, ``description``, ``sequence``/``text``) -> its shard rows, same order."""
    items = table.column(content_column(kind)).to_pylist()
    dim = int(embedder.model.cfg.projection_dim)
    vectors = embed_strings(embedder, items, kind, batch_size) if items else np.zeros((0, dim), np.float32)
    lengths = np.fromiter((len(s) for s in items), dtype=np.int64, count=len(items))
    return embedding_table(table.column("id").to_pylist(), table.column("description").to_pylist(), lengths,
                           vectors)  # fmt: skip
