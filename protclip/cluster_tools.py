"""Pre-submit checks for ``ray job submit``: pack the working dir as Ray would and refuse an oversized upload.

Why: ``ray job submit`` zips the runtime_env ``working_dir`` on the client and PUTs it to the dashboard, which
rejects bodies above 100 MiB with an unclear ``RequestEntityTooLarge`` (ray #38566, #45602, #55877); a stray
``.git``, virtualenv or data folder is the usual cause. This tool walks the directory with the same rules Ray
applies (``ray._private.runtime_env.packaging``): the runtime_env ``excludes``, Ray's default excludes, and the
``.gitignore``/``.rayignore`` files of every directory, all as gitignore-style patterns (Ray's own vendored
``pathspec``). It then writes the zip uncompressed, as Ray does, and fails with the largest offenders listed.

Ray is imported lazily and only for its pattern matcher and default-exclude list, so the check agrees with the
Ray version that will do the upload.

    python -m protclip.cluster_tools check-runtime-env [--runtime-env cluster/runtime_env.yaml] [--max-mib 100]
    python -m protclip.cluster_tools validate cluster/aws/ray-cluster.yaml cluster/kuberay/*.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_MAX_MIB",
    "RuntimeEnvError",
    "RuntimeEnvTooLargeError",
    "PackReport",
    "load_runtime_env",
    "effective_excludes",
    "iter_packed_paths",
    "pack_working_dir",
    "check_runtime_env",
    "main",
]

# The dashboard's upload limit for `ray job submit` (ray_constants.DASHBOARD_CLIENT_MAX_SIZE = 100 MiB).
# `ray.init(runtime_env=...)` goes through GCS instead and allows up to 512 MiB in Ray 2.60.
DEFAULT_MAX_MIB = 100.0
FILE_WARN_BYTES = 10 * 1024 * 1024  # Ray warns per file above this size (packaging.FILE_SIZE_WARNING)
_REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "http://", "https://", "az://", "abfss://", "file://")
_MIB = 1024 * 1024

Matcher = Callable[[Path], bool]


class RuntimeEnvError(ValueError):
    """The runtime_env file or its working_dir is unusable."""


class RuntimeEnvTooLargeError(RuntimeEnvError):
    """The packed working_dir exceeds the upload limit; the message lists the largest offenders."""

    def __init__(self, message: str, report: PackReport):
        super().__init__(message)
        self.report = report


@dataclass
class PackReport:
    """What Ray would upload: the files (relative path -> bytes) and the size of the zip."""

    working_dir: Path
    files: dict[str, int] = field(default_factory=dict)
    zip_bytes: int = 0  # size of the zip as written (0 when it was not written because the estimate was over)
    estimated_bytes: int = 0  # sum of file sizes plus zip headers
    limit_bytes: int = int(DEFAULT_MAX_MIB * _MIB)

    @property
    def size_bytes(self) -> int:
        return self.zip_bytes or self.estimated_bytes

    def largest_files(self, n: int = 10) -> list[tuple[str, int]]:
        return sorted(self.files.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def largest_entries(self, n: int = 10) -> list[tuple[str, int]]:
        """Sizes summed per top-level entry of the working dir (a folder counts all it packs)."""
        sums: dict[str, int] = {}
        for rel, size in self.files.items():
            top = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
            sums[top] = sums.get(top, 0) + size
        return sorted(sums.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def summary(self, top: int = 10) -> str:
        lines = [f"working_dir {self.working_dir} packs {len(self.files)} files into {_mib(self.size_bytes)} "
                 f"(limit {_mib(self.limit_bytes)})"]
        lines.append("largest top-level entries:")
        lines += [f"  {_mib(s):>12}  {name}" for name, s in self.largest_entries(top)]
        lines.append("largest files:")
        lines += [f"  {_mib(s):>12}  {name}" for name, s in self.largest_files(top)]
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / _MIB:.2f} MiB"


def _pathspec_cls() -> Any:
    """Ray's vendored gitwildmatch matcher (the one its packager uses); the public ``pathspec`` as fallback."""
    try:
        from ray._private.thirdparty.pathspec import PathSpec
    except ImportError:
        try:
            from pathspec import PathSpec  # type: ignore[no-redef]
        except ImportError as e:  # pragma: no cover - ray is a core dependency
            raise RuntimeEnvError("neither ray nor pathspec is installed: cannot match exclude patterns") from e
    return PathSpec


def _ray_default_excludes() -> list[str]:
    """Ray's built-in excludes (``.git,.venv,venv,__pycache__`` in 2.60; env-overridable), [] on older Ray."""
    try:
        from ray._private.ray_constants import get_runtime_env_default_excludes
    except ImportError:
        return []
    return list(get_runtime_env_default_excludes())


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """Read a runtime_env YAML (``safe_load``) and check the fields this tool relies on."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise RuntimeEnvError(f"runtime_env file not found: {p}") from None
    except yaml.YAMLError as e:
        raise RuntimeEnvError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise RuntimeEnvError(f"{p}: a runtime_env must be a mapping, got {type(doc).__name__}")
    wd = doc.get("working_dir")
    if wd is not None and not isinstance(wd, str):
        raise RuntimeEnvError(f"{p}: field 'working_dir' must be a string, got {type(wd).__name__}")
    excl = doc.get("excludes", [])
    if not isinstance(excl, list) or not all(isinstance(x, str) for x in excl):
        raise RuntimeEnvError(f"{p}: field 'excludes' must be a list of strings")
    env_vars = doc.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
        raise RuntimeEnvError(f"{p}: field 'env_vars' must map names to strings (quote numbers: \"1\")")
    return doc


def effective_excludes(runtime_env: dict[str, Any]) -> list[str]:
    """Ray's default excludes followed by the runtime_env's own, as Ray combines them."""
    return _ray_default_excludes() + list(runtime_env.get("excludes") or [])


def _matcher(base: Path, patterns: list[str]) -> Matcher:
    spec = _pathspec_cls().from_lines("gitwildmatch", patterns)
    base = base.absolute()

    def match(p: Path) -> bool:
        return bool(spec.match_file(str(p.absolute().relative_to(base))))

    return match


def _ignore_file_matchers(directory: Path, include_gitignore: bool) -> list[Matcher]:
    names = ([".gitignore"] if include_gitignore else []) + [".rayignore"]
    out = []
    for name in names:
        f = directory / name
        if f.is_file():
            out.append(_matcher(directory, f.read_text(errors="replace").splitlines()))
    return out


def iter_packed_paths(working_dir: str | Path, excludes: list[str],
                      include_gitignore: bool | None = None) -> Iterator[Path]:
    """Yield every file (and empty directory) Ray would put in the zip, mirroring ``packaging._dir_travel``.

    Args:
        working_dir (str | Path): directory to pack.
        excludes (list[str]): gitignore-style patterns relative to ``working_dir``.
        include_gitignore (bool | None): honour ``.gitignore`` files. Default: as Ray, unless
            ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``.
    """
    root = Path(working_dir).absolute()
    if not root.is_dir():
        raise RuntimeEnvError(f"working_dir {root} is not a directory")
    if include_gitignore is None:
        include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    matchers: list[Matcher] = [_matcher(root, excludes)]

    def travel(path: Path) -> Iterator[Path]:
        local = _ignore_file_matchers(path, include_gitignore) if path.is_dir() else []
        matchers.extend(local)
        try:
            if not any(m(path) for m in matchers):
                if (path.is_dir() and next(path.iterdir(), None) is None) or path.is_file():
                    yield path
                if path.is_dir():
                    for sub in sorted(path.iterdir()):
                        yield from travel(sub)
        finally:
            del matchers[len(matchers) - len(local):]

    yield from travel(root)


def _zip_overhead(rel: str) -> int:
    # local header (30) + central directory entry (46) + the name twice; small extras ignored
    return 76 + 2 * len(rel.encode())


def pack_working_dir(working_dir: str | Path, excludes: list[str], out_zip: str | Path | None = None,
                     limit_bytes: int | None = None, include_gitignore: bool | None = None) -> PackReport:
    """List what Ray would pack and, unless the estimate is already over ``limit_bytes``, write the zip.

    The zip is written uncompressed (``ZIP_STORED``) like Ray's, so its size is the upload size.
    """
    root = Path(working_dir).absolute()
    report = PackReport(working_dir=root)
    if limit_bytes is not None:
        report.limit_bytes = limit_bytes
    paths = list(iter_packed_paths(root, excludes, include_gitignore))
    for p in paths:
        rel = p.relative_to(root).as_posix()
        size = p.stat().st_size if p.is_file() else 0
        report.files[rel] = size
        report.estimated_bytes += size + _zip_overhead(rel) + (1 if p.is_dir() else 0)
    report.estimated_bytes += 22  # end of central directory
    if out_zip is None or (limit_bytes is not None and report.estimated_bytes > limit_bytes):
        return report
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_STORED, strict_timestamps=False) as zf:
        for p in paths:
            zf.write(p, p.relative_to(root).as_posix())
    report.zip_bytes = Path(out_zip).stat().st_size
    return report


def _local_dirs(runtime_env: dict[str, Any], working_dir: str | Path | None) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    wd = working_dir if working_dir is not None else runtime_env.get("working_dir")
    if wd is not None and not str(wd).startswith(_REMOTE_PREFIXES):
        out.append(("working_dir", Path(wd)))
    for mod in runtime_env.get("py_modules") or []:
        if isinstance(mod, str) and not mod.startswith(_REMOTE_PREFIXES) and Path(mod).is_dir():
            out.append((f"py_modules[{mod}]", Path(mod)))
    return out


def check_runtime_env(runtime_env_path: str | Path, working_dir: str | Path | None = None,
                      max_mib: float = DEFAULT_MAX_MIB, keep_zip: str | Path | None = None,
                      top: int = 10) -> list[PackReport]:
    """Pack every local directory of a runtime_env as Ray would; raise if one is over ``max_mib``.

    ``working_dir`` overrides the file's (like ``ray job submit --working-dir``); relative paths are resolved
    against the current directory, as the Ray CLI does.

    Raises:
        RuntimeEnvTooLargeError: a package is over the limit (message names the largest entries and files).
        RuntimeEnvError: unreadable runtime_env or missing directory.
    """
    env = load_runtime_env(runtime_env_path)
    excludes = effective_excludes(env)
    limit = int(max_mib * _MIB)
    reports = []
    for label, d in _local_dirs(env, working_dir):
        if not d.is_dir():
            raise RuntimeEnvError(f"{runtime_env_path}: {label} {d.absolute()} is not a directory "
                                  "(run from the repository root or pass --working-dir)")
        with tempfile.TemporaryDirectory(prefix="protclip_pkg_") as tmp:
            out = Path(keep_zip) if keep_zip and label == "working_dir" else Path(tmp) / "pkg.zip"
            rep = pack_working_dir(d, excludes, out_zip=out, limit_bytes=limit)
        reports.append(rep)
        if rep.size_bytes > limit:
            raise RuntimeEnvTooLargeError(
                f"{label} is too large for `ray job submit`: {_mib(rep.size_bytes)} > {_mib(limit)}.\n"
                + rep.summary(top)
                + f"\nFix: add the offenders to 'excludes' in {runtime_env_path} (gitignore syntax; anchor "
                "root folders with a leading '/') or to a .rayignore file, and keep data and checkpoints in "
                "object storage (s3://...).", rep)
    return reports


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        reports = check_runtime_env(args.runtime_env, args.working_dir, args.max_mib, args.zip, args.top)
    except RuntimeEnvTooLargeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeEnvError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not reports:
        print("nothing to upload: working_dir is remote or unset")
    for rep in reports:
        print(rep.summary(args.top) if args.verbose else
              f"ok: {rep.working_dir} packs {len(rep.files)} files into {_mib(rep.size_bytes)} "
              f"(limit {_mib(rep.limit_bytes)})")
        big = [(n, s) for n, s in rep.largest_files(50) if s >= FILE_WARN_BYTES]
        for name, size in big:
            print(f"warning: {name} is {_mib(size)}; Ray warns above 10 MiB per file", file=sys.stderr)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from protclip.cluster_manifests import validate_file

    bad = 0
    for path in args.paths:
        errors = validate_file(path)
        for err in errors:
            print(f"{path}: {err}", file=sys.stderr)
        bad += bool(errors)
        if not errors:
            print(f"ok: {path}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protclip.cluster_tools", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check-runtime-env", help="pack the working dir as Ray would; fail above --max-mib")
    c.add_argument("--runtime-env", default="cluster/runtime_env.yaml")
    c.add_argument("--working-dir", default=None, help="override the file's working_dir (as ray job submit)")
    c.add_argument("--max-mib", type=float, default=DEFAULT_MAX_MIB)
    c.add_argument("--zip", default=None, help="keep the packed zip at this path for inspection")
    c.add_argument("--top", type=int, default=10, help="how many offenders to list")
    c.add_argument("-v", "--verbose", action="store_true", help="print the largest entries even when ok")
    c.set_defaults(func=_cmd_check)
    v = sub.add_parser("validate", help="validate Ray cluster launcher configs and KubeRay manifests")
    v.add_argument("paths", nargs="+")
    v.set_defaults(func=_cmd_validate)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
