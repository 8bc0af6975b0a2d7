"""Where Ray Train keeps a run: the ``storage_path``/``storage_filesystem`` pair of ``ray.train.RunConfig``."""

from __future__ import annotations

from typing import Any

from protclip import storage


def ray_storage(uri: str, access: storage.StorageConfig | None) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)``: an absolute local path and None, or for a remote URI its path and
    a pyarrow file system carrying our endpoint and credentials (Ray would otherwise use its own defaults)."""
    if not storage.is_remote(uri):
        _, path = storage.filesystem(uri)
        return path, None
    fs, path = storage.pyarrow_filesystem(uri, access)
    return path, fs
