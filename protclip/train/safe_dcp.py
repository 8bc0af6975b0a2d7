"""Load ``torch.distributed.checkpoint`` (DCP) folders without running code hidden in them.

Why: DCP reads tensors with ``torch.load(weights_only=True)``, but its ``.metadata`` file with plain
``pickle.load`` (torch 2.13, ``FileSystemReader.read_metadata``). A checkpoint folder copied from a shared bucket
could therefore execute arbitrary code on ``dcp.load``. :class:`SafeFileSystemReader` unpickles the metadata with
an allow-list of the classes DCP itself writes (its metadata dataclasses, ``torch.Size``, dtypes, layouts, paths)
and refuses anything else with :class:`UnsafeCheckpointError`, naming the offending global.

Use ``dcp.load(state, storage_reader=safe_reader(path))`` wherever a checkpoint is loaded.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

__all__ = ["SafeFileSystemReader", "UnsafeCheckpointError", "safe_reader", "load_metadata"]

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED: dict[str, frozenset[str]] = {
    _DCP_METADATA: frozenset({
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    }),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.distributed.checkpoint.planner": frozenset({"WriteItemType", "LoadItemType"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"}),
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset({"set", "frozenset", "slice", "complex"}),
}  # fmt: skip


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint metadata refers to something a DCP checkpoint never contains; nothing was executed."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, where: str) -> None:
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch":
            obj = getattr(torch, name, None)
            if obj is torch.Size or isinstance(obj, torch.dtype | torch.layout | torch.memory_format):
                return obj
        raise UnsafeCheckpointError(
            f"{self._where}: refers to {module}.{name}, which a DCP checkpoint never contains; refusing to load it "
            "(a tampered or foreign file?)"
        )


def load_metadata(stream: Any, where: str = "checkpoint metadata") -> Metadata:
    """Unpickle a DCP ``.metadata`` stream with the allow-list."""
    md = _MetadataUnpickler(stream, where).load()
    if not isinstance(md, Metadata):
        raise UnsafeCheckpointError(f"{where}: holds a {type(md).__name__}, not DCP Metadata")
    return md


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose metadata is unpickled with an allow-list (tensors: weights_only, as before)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as f:
            md = load_metadata(f, str(path))
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


def safe_reader(path: str | os.PathLike) -> SafeFileSystemReader:
    return SafeFileSystemReader(path)
