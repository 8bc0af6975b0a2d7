"""A model's identity for search: a checksum over its weights, so an index is only ever queried with the model
that made it.

Why the weights and not the files: the same trained model reaches the jobs as a DCP checkpoint, an export folder
or MLflow artifacts; hashing the loaded tensors (by name, dtype, shape and float32 bytes) gives the same value
for all three, and any retraining, fine-tuning or different head gives another.
"""

from __future__ import annotations

import hashlib

from torch import nn

__all__ = ["model_checksum", "IndexModelMismatch", "check_model_matches"]


def model_checksum(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in name order, as float32 (fp32 and bf16 copies of one model
    differ; the checksum is taken before any cast, on the weights as loaded)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


class IndexModelMismatch(ValueError):
    """The model given for a query is not the one the index was built with (dimension or weights)."""


def check_model_matches(index_name: str, index_dim: int, index_checksum: str, dim: int, checksum: str) -> None:
    """Raise :class:`IndexModelMismatch` naming the index and what differs."""
    if index_dim != dim:
        raise IndexModelMismatch(
            f"index {index_name}: built with {index_dim}-dimensional embeddings, the model gives {dim}; "
            "query it with the model that embedded it (see its index.json)"
        )
    if index_checksum != checksum:
        raise IndexModelMismatch(
            f"index {index_name}: built with model checksum {index_checksum[:12]}..., the model given has "
            f"{checksum[:12]}...; query it with the model that embedded it (see its index.json)"
        )
