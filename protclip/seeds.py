"""Deterministic seeds from names and numbers, without torch.

Kept apart from :mod:`protclip.dist` so that Ray Data's read and sampling tasks, which need only numpy and
pyarrow, do not import torch in every worker process they start (seconds per cold worker on a small machine).
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["derive_seed"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any sequence of ints/strings (blake2b; same on every platform and process)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little") >> 1
