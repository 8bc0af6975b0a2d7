"""Local paths of a job config made absolute against the launching directory, once, on the driver.

Why: Ray runs tasks and Train workers in its own session folder, so a relative ``storage.storage_path: runs``
resolved there lands under ``/tmp/ray/session_*/`` while the console prints ``./runs``. Every path is therefore
resolved when the config is loaded (:func:`protclip.config.cli_config`), before anything reaches a worker, and
whatever is printed, tagged or logged afterwards is absolute.

Which fields are paths is a convention, not a hand list per job (CONTRIBUTING.md, "Code conventions"):

- a field named like :data:`PATH_NAMES` or ending in :data:`PATH_SUFFIXES` is a path; :data:`OUTPUT_NAMES` are
  the ones a job writes to;
- a field named like :data:`MODEL_NAMES` names a model (hub id, ``wheel:``/``mlflow:`` source or a local folder):
  it is made absolute only when a local folder of that name exists (what ``from_pretrained`` would load), and the
  path after a ``protclip:``/``tower:`` prefix always;
- ``field(metadata={"path": "input" | "output" | "model" | False})`` overrides the name rule for one field;
- keys of free-form dict fields (an eval suite's ``config``) follow the same name rule.

URIs with a scheme (``s3://``, ``file://``, ``sqlite:///``, ``http://``) are left as they are; ``shared:<p>``
becomes the path under :func:`protclip.paths.shared_data_dir`. Pure: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from protclip.paths import SHARED_PREFIX, resolve_shared

__all__ = [
    "PATH_NAMES",
    "PATH_SUFFIXES",
    "OUTPUT_NAMES",
    "MODEL_NAMES",
    "MODEL_PATH_PREFIXES",
    "ResolvedPath",
    "PathError",
    "field_role",
    "resolve_local_paths",
    "relative_paths_seen",
    "in_ray_job",
]

#: field names whose values are local paths or URIs
PATH_NAMES = frozenset({"uri", "path", "inputs", "output", "export", "checkpoint", "embeddings", "resume_from",
                        "model_config", "pretrain_config", "artifact_location", "storage_path", "output_dir"})
#: name endings of path fields (``test_path``, ``output_dir``, ``clusters_tsv``, ``wt_fasta``, ``go_obo``...)
PATH_SUFFIXES = ("_path", "_dir", "_file", "_tsv", "_fasta", "_obo")
#: path fields a job writes to: refused as relative paths inside a ``ray job submit`` package
OUTPUT_NAMES = frozenset({"output", "output_dir", "storage_path", "artifact_location"})
#: fields naming a model: a keyword, a hub id, a prefixed source, or a local folder
MODEL_NAMES = frozenset({"source", "protein_model", "text_model", "text_tokenizer"})
#: model-source prefixes followed by a path
MODEL_PATH_PREFIXES = ("protclip:", "tower:")

Role = Literal["input", "output", "model"]
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_RELATIVE_SEEN: list[ResolvedPath] = []


class PathError(ValueError):
    """A path of the config cannot be used here; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class ResolvedPath:
    key: str  # dotted config key, e.g. storage.storage_path or eval.suites[0].config.path
    given: str  # the value as written
    resolved: str  # the absolute path it became
    role: Role


def field_role(name: str, metadata: Any = None) -> Role | None:
    """The role of a field by its metadata (``path``) or, without one, by its name; None = not a path."""
    if metadata and "path" in metadata:
        return metadata["path"] or None
    if name in MODEL_NAMES:
        return "model"
    if name in OUTPUT_NAMES:
        return "output"
    if name in PATH_NAMES or name.endswith(PATH_SUFFIXES):
        return "input"
    return None


def in_ray_job() -> bool:
    """True in the entrypoint of a ``ray job submit`` job: it runs in Ray's unpacked copy of the working dir."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        try:
            runtime_env = json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]).get("runtime_env") or {}
        except (ValueError, AttributeError):
            runtime_env = {}
        if runtime_env.get("working_dir"):
            return True
    return "runtime_resources/working_dir_files" in os.getcwd().replace(os.sep, "/")


def relative_paths_seen() -> list[ResolvedPath]:
    """Relative local paths the configs loaded by this process named (checked once Ray's node count is known)."""
    return list(_RELATIVE_SEEN)


def _is_local(value: str) -> bool:
    return not _SCHEME.match(value)


def _absolute(value: str, key: str, base: str) -> tuple[str, bool]:
    """``(absolute path, was relative)`` of a local path value; ``shared:`` resolved, URIs unchanged."""
    if value.startswith(SHARED_PREFIX):
        try:
            return resolve_shared(value), False
        except FileNotFoundError as e:
            raise PathError(key, f"{value!r}: {e}") from None
    if not _is_local(value):
        return value, False
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded), False
    return os.path.normpath(os.path.join(base, expanded)), True


def _resolve_value(value: str, key: str, role: Role, base: str) -> tuple[str, bool]:
    if not value:
        return value, False
    if role != "model":
        return _absolute(value, key, base)
    for prefix in MODEL_PATH_PREFIXES:
        if value.startswith(prefix):
            path, rel = _absolute(value[len(prefix):], key, base)
            return prefix + path, rel
    if _is_local(value) and ":" not in value.split("/", 1)[0]:  # hub ids and keywords stay; folders resolve
        candidate = os.path.join(base, os.path.expanduser(value))
        if os.path.isdir(candidate) and not os.path.isabs(os.path.expanduser(value)):
            return os.path.normpath(candidate), True
    return value, False


def _walk(node: Any, key: str, role: Role | None, base: str, visit: Callable[[str, str, Role], str]) -> Any:
    """Return ``node`` with each path value replaced by ``visit(key, value, role)`` (dataclasses in place)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            child = getattr(node, f.name)
            sub = f"{key}.{f.name}" if key else f.name
            new = _walk(child, sub, field_role(f.name, f.metadata), base, visit)
            if new is not child:
                object.__setattr__(node, f.name, new)
        return node
    if isinstance(node, dict):
        out = {k: _walk(v, f"{key}.{k}", field_role(str(k)), base, visit) for k, v in node.items()}
        return out if any(out[k] is not node[k] for k in node) else node
    if isinstance(node, (list, tuple)):
        items = [_walk(v, f"{key}[{i}]", role, base, visit) for i, v in enumerate(node)]
        if all(a is b for a, b in zip(items, node, strict=True)):
            return node
        return type(node)(items)
    if isinstance(node, str) and role is not None:
        new = visit(key, node, role)
        return node if new == node else new
    return node


def _check_tracking_default(cfg: Any, key: str) -> None:
    """Inside a Ray job the default MLflow store (``sqlite:///<cwd>/mlflow.db``) would land in Ray's package."""
    for f in dataclasses.fields(cfg):
        child = getattr(cfg, f.name)
        sub = f"{key}.{f.name}" if key else f.name
        if type(child).__name__ == "TrackingConfig":
            if child.enabled and not child.uri and not os.environ.get("MLFLOW_TRACKING_URI"):
                raise PathError(f"{sub}.uri", "unset, and this job runs in Ray's unpacked copy of the working dir "
                                "(ray job submit): the default ./mlflow.db would be lost with it; set tracking.uri "
                                "or MLFLOW_TRACKING_URI to an MLflow server or a shared path")
        elif dataclasses.is_dataclass(child) and not isinstance(child, type):
            _check_tracking_default(child, sub)


def resolve_local_paths(cfg: Any, base: str | None = None) -> list[ResolvedPath]:
    """Make every local path of the config tree ``cfg`` absolute against ``base`` (default: the working
    directory), in place. Returns the values that were relative. Raises :class:`PathError` for a ``shared:``
    path whose folder is missing, and inside a ``ray job submit`` job for a relative output path."""
    base = os.path.abspath(base or os.getcwd())
    job = in_ray_job()
    relative: list[ResolvedPath] = []

    def visit(key: str, value: str, role: Role) -> str:
        new, was_relative = _resolve_value(value, key, role, base)
        if was_relative:
            if job and role == "output":
                raise PathError(key, f"{value!r} is relative, and this job runs in Ray's unpacked copy of the "
                                "working dir (ray job submit), which is deleted with it: give an s3:// URI or an "
                                "absolute path on a shared file system")
            relative.append(ResolvedPath(key, value, new, role))
        return new

    _walk(cfg, "", None, base, visit)
    if job:
        _check_tracking_default(cfg, "")
    _RELATIVE_SEEN.extend(relative)
    return relative
