"""One typed config system for every job: dataclass trees, YAML files and dotted CLI overrides.

Why not argparse flags or Hydra: a run is described by one YAML file that is logged verbatim to MLflow, and any
field can be overridden from the command line (``--data.sampling.seed 7``) without declaring a flag. Every value
is checked against the dataclass field type, and unknown keys fail loudly with the closest valid names, so a typo
never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "MOVED_KEYS",
    "load_config",
    "from_dict",
    "to_dict",
    "flatten",
    "parse_overrides",
    "apply_overrides",
    "dump_yaml",
    "cli_config",
    "resolve_paths",
]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key path and what is wrong.

    ``key`` is the dotted key (or section) the error is about, when known: :func:`load_config` uses it to say
    whether the bad value came from the command line or from the YAML file."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


#: Keys that moved to another section, by ``<section class>.<old key>``: a config still setting one fails with
#: an error naming the new dotted key instead of a generic "unknown key" (each setting lives in one place).
MOVED_KEYS: dict[str, str] = {
    "ModelConfig.max_protein_length": "data.max_protein_length",
    "ModelConfig.max_text_length": "data.max_text_length",
    "ModelConfig.max_subtext_length": "data.max_subtext_length",
    "ModelConfig.gradient_checkpointing": "train.activation_checkpointing",
    "FinetuneTrainConfig.gradient_checkpointing": "train.activation_checkpointing",
}


def _unknown_key_hint(cls: type, key: str, valid: Sequence[str]) -> str:
    """``; did you mean ...?`` for an unknown ``key`` of section ``cls`` (the new place of a moved key first)."""
    moved = MOVED_KEYS.get(f"{cls.__name__}.{key}")
    if moved:
        return f"; it moved: did you mean {moved}?"
    close = difflib.get_close_matches(key, list(valid), n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""


# ----------------------------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: {value!r} does not match {_type_name(tp)}", path)
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: {value!r} is not one of {list(args)}", path)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for section {tp.__name__}, got {value!r}", path)
        return from_dict(tp, value, _path=path)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}", path)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}", path)
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}", path)
        kt, vt = (args + (Any, Any))[:2] if args else (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: expected true/false, got {value!r}", path)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}", path)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError as e:
                raise ConfigError(f"{path}: expected an integer, got {value!r}", path) from e
        raise ConfigError(f"{path}: expected an integer, got {value!r}", path)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}", path)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError as e:
                raise ConfigError(f"{path}: expected a number, got {value!r}", path) from e
        raise ConfigError(f"{path}: expected a number, got {value!r}", path)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}", path)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: cannot use {value!r} as {_type_name(tp)}", path)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: Mapping[str, Any] | None, _path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively, rejecting unknown keys with a suggestion."""
    data = dict(data or {})
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        where = f"{_path}.{k}" if _path else k
        hint = _unknown_key_hint(cls, k, list(types_)) or f"; valid keys: {', '.join(sorted(types_))}"
        raise ConfigError(f"unknown config key '{where}'{hint}", where)
    kwargs = {}
    for name, tp in types_.items():
        if name in data:
            kwargs[name] = _coerce(data[name], tp, f"{_path}.{name}" if _path else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"{_path or cls.__name__}: {e}", _path) from e


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list form of a config (for YAML dumps and equality checks)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key flat dict of a config tree (MLflow params). Lists are JSON-encoded."""
    out: dict[str, Any] = {}
    d = to_dict(cfg)

    def rec(obj: Any, key: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                rec(v, f"{key}.{k}" if key else str(k))
        elif isinstance(obj, list):
            out[key] = json.dumps(obj)
        else:
            out[key] = obj

    rec(d, prefix)
    return out


# ------------------------------------------------------------------------------------------------ overrides


def parse_overrides(argv: Sequence[str]) -> dict[str, str]:
    """``["--a.b", "1", "--c=x"]`` -> ``{"a.b": "1", "c": "x"}``; values stay strings until typed."""
    out: dict[str, str] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument '{tok}': overrides look like --section.key value")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override '{tok}' has no value")
            i += 1
            val = argv[i]
        out[key] = val
        i += 1
    return out


def _parse_scalar(text: str) -> Any:
    """YAML-parse an override value so '7' is 7, 'null' is None, '[1,2]' a list; plain words stay strings."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, str], cls: type) -> dict[str, Any]:
    """Set dotted keys in the nested ``data`` dict, validating each path against the dataclass tree."""
    for dotted, raw in overrides.items():
        parts = dotted.split(".")
        node_cls: Any = cls
        node = data
        for i, part in enumerate(parts):
            types_ = _field_types(node_cls)
            if part not in types_:
                where = ".".join(parts[: i + 1])
                hint = _unknown_key_hint(node_cls, part, list(types_))
                raise ConfigError(f"unknown config key '{where}' in override --{dotted}{hint}")
            tp = types_[part]
            if i == len(parts) - 1:
                node[part] = _parse_scalar(raw) if not _is_str_type(tp) else raw
            else:
                inner = _dataclass_of(tp)
                if inner is None:
                    raise ConfigError(f"override --{dotted}: '{'.'.join(parts[: i + 1])}' is not a section")
                node = node.setdefault(part, {})
                if node is None:
                    node = {}
                node_cls = inner
    return data


def _is_str_type(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)
                         and not any(a in (int, float, bool) for a in typing.get_args(tp)))


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp):
        if dataclasses.is_dataclass(a):
            return a
    return None


# ------------------------------------------------------------------------------------------------ loading


def _blame(e: ConfigError, overrides: Mapping[str, str], path: str | Path | None, cli_prefix: str) -> str:
    """Where a bad value came from: ``command line --key`` when an override set it, else the YAML file."""
    text = str(e)
    hits = [k for k in overrides if (e.key and (k == e.key or e.key.startswith(k + ".") or e.key.startswith(k + "[")))
            or re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", text)]
    if hits:
        return f"command line {', '.join(f'--{cli_prefix}{k}' for k in hits)}: "
    inside = [k for k in overrides if e.key and k.startswith(e.key + ".")]
    if inside and path is None:
        return f"command line {', '.join(f'--{cli_prefix}{k}' for k in inside)}: "
    if inside:
        return f"{path} with command line {', '.join(f'--{cli_prefix}{k}' for k in inside)}: "
    return f"{path}: " if path is not None else ""


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] | Mapping[str, str] = (),
                cli_prefix: str = "") -> T:
    """Load ``cls`` from an optional YAML file plus dotted overrides; raise ConfigError on any problem.

    An error names where the bad value came from: ``command line --train.lr: ...`` for an override (written with
    ``cli_prefix``, e.g. ``pretrain.`` for the demo's ``--pretrain.train.lr``), else the YAML file."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    ov = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    try:
        data = apply_overrides(data, ov, cls)
    except ConfigError as e:
        msg = str(e).replace("override --", f"override --{cli_prefix}") if cli_prefix else str(e)
        raise ConfigError(f"command line: {msg}", e.key) from None
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{_blame(e, ov, path, cli_prefix)}{e}", e.key) from None


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what gets logged as the run's config artifact)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def cli_config(cls: type[T], argv: Sequence[str], base_dir: str | None = None) -> T:
    """Parse ``[--config FILE] [--a.b value ...]`` into ``cls`` (the common entry-point helper).

    Every local path of the result is absolute against ``base_dir`` (default: the launching directory), so
    Ray workers, which run elsewhere, read and write where the user meant (:mod:`protclip.local_paths`)."""
    argv = list(argv)
    path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file path")
        path = argv[i + 1]
        del argv[i : i + 2]
    else:
        for i, a in enumerate(argv):
            if a.startswith("--config="):
                path = a.split("=", 1)[1]
                del argv[i]
                break
    cfg = load_config(cls, path, argv)
    resolve_paths(cfg, base_dir)
    return cfg


def resolve_paths(cfg: Any, base_dir: str | None = None) -> None:
    """Make the local paths of a loaded config absolute (in place); a path problem is a ConfigError."""
    from protclip.local_paths import PathError, resolve_local_paths

    try:
        resolve_local_paths(cfg, base_dir)
    except PathError as e:
        raise ConfigError(str(e), e.key) from None
