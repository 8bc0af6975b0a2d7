"""Find the ProtAnno Parquet files under a URI and check every footer before any Ray work starts.

Why up front: a corrupt or schema-mismatched shard otherwise surfaces minutes (or hours) into training as a
stack trace from some Ray worker. Reading footers is cheap (a few KB per file, done in a thread pool), and it
also yields the row groups, which are the units the pipeline reads and shuffles. Pure pyarrow + fsspec, no Ray.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from protclip.data.schema import PROTANNO_SCHEMA, SchemaMismatchError, validate_table
from protclip.storage import filesystem, is_remote, join, redact, scheme_of

#: files under the URI that are not data (Spark/Ray markers, manifests, checksums)
_SKIP_PREFIXES = ("_", ".")


class ProtAnnoFileError(ValueError):
    """One or more Parquet files under the data URI are unreadable or not ProtAnno; names every such file.

    Damage found while reading also carries ``path``, ``row_group`` and ``column`` (None where unknown).
    """

    path: str | None = None
    row_group: int | None = None
    column: str | None = None


def resolve_protanno(uri: str, storage_cfg: Any = None) -> str:
    """The folder that holds the published shards of a ProtAnno output.

    A versioned build publishes ``<uri>/manifest.json`` with a ``version`` key naming the folder
    ``<uri>/<version>/`` (:mod:`protclip.data.build`); readers follow it. Anything else (a pre-versioning build,
    plain Parquet, a single file, a key prefix) is returned unchanged.
    """
    if not uri:
        return uri
    fs, path = filesystem(uri, storage_cfg)
    pointer = f"{path.rstrip('/')}/manifest.json"
    try:
        if not fs.isfile(pointer):
            return uri
        with fs.open(pointer, "r") as f:
            version = json.load(f).get("version")
    except FileNotFoundError:
        return uri
    except (OSError, ValueError) as e:
        raise ProtAnnoFileError(f"{redact(uri)}/manifest.json: cannot be read ({type(e).__name__}: "
                                f"{redact(str(e))[:200]})") from None
    if not isinstance(version, str) or not version.startswith("v-"):  # not a ProtAnno build pointer
        return uri
    if "/" in version:
        raise ProtAnnoFileError(f"{redact(uri)}/manifest.json: version {version!r} is not a folder name")
    if not fs.isdir(f"{path.rstrip('/')}/{version}"):
        raise ProtAnnoFileError(f"{redact(uri)}/manifest.json points to version {version}, which is missing "
                                f"(removed by hand?); rebuild the folder")
    return join(uri, version)


@dataclass(frozen=True)
class Fragment:
    """One row group of one file: the unit a read task reads and the block-level shuffle permutes."""

    path: str  # as the file system expects it (no scheme for s3)
    row_group: int
    num_rows: int
    # footer statistics (any reviewed, min PE, max k) when the writer stored them; lets the sampler skip row
    # groups in which no row can be kept without reading them
    bounds: tuple[bool, int, int] | None = None

    def may_keep(self, sampling: Any) -> bool:
        """False only when the footer proves that the sampler keeps no row of this row group."""
        if self.bounds is None or sampling.mode == "none":
            return True
        any_reviewed, pe_min, k_max = self.bounds
        if any_reviewed and sampling.keep_reviewed:
            return True
        return pe_min <= sampling.max_pe and k_max >= sampling.min_k


@dataclass
class ParquetInventory:
    """The validated files under a URI, with their row groups."""

    uri: str
    fs: Any  # fsspec file system the paths belong to (picklable; shipped to read tasks)
    files: list[dict[str, Any]] = field(default_factory=list)  # {"path", "rows", "row_groups", "bytes"}
    fragments: list[Fragment] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(f["rows"] for f in self.files)

    def display(self, path: str) -> str:
        return display_path(self.uri, path)


def display_path(uri: str, path: str) -> str:
    """A path as the user would write it (``s3://bucket/key`` for S3), secrets scrubbed."""
    if is_remote(uri) and "://" not in path:
        return redact(f"{scheme_of(uri)}://{path}")
    return redact(path)


def list_parquet_files(fs: Any, path: str, uri: str) -> list[str]:
    """Sorted ``.parquet`` files at ``path`` (a file or a folder/prefix, searched recursively)."""
    try:
        if fs.isfile(path):
            return [path]
        found = fs.find(path)
        if not found:  # a key prefix such as s3://bucket/protanno/part- rather than a folder
            found = [q for p in fs.glob(path.rstrip("/") + "*") for q in (fs.find(p) if fs.isdir(p) else [p])]
    except FileNotFoundError:
        found = []
    except Exception as e:  # botocore / permission errors: name the URI, never a secret
        raise ProtAnnoFileError(f"{redact(uri)}: cannot list files ({type(e).__name__}): {redact(str(e))}") from None
    files = sorted(
        p for p in found
        if p.endswith(".parquet") and not os.path.basename(p).startswith(_SKIP_PREFIXES)
    )  # fmt: skip
    if not files:
        raise ProtAnnoFileError(f"{redact(uri)}: no .parquet files found")
    return files


def open_input(fs: Any, path: str):
    """Open for random access; remote files without read-ahead so only the requested column chunks travel."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        return fs.open(path, "rb")
    return fs.open(path, "rb", cache_type="none")


def _inspect(fs: Any, path: str, uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """Footer of one file -> (file info, None) or (None, problem)."""
    shown = display_path(uri, path)
    try:
        with open_input(fs, path) as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except Exception as e:
        return None, f"{shown}: not a readable Parquet file ({type(e).__name__}: {redact(str(e))[:200]})"
    try:
        validate_table(schema.empty_table(), shown)
    except SchemaMismatchError as e:
        return None, str(e)
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    bounds = [_bounds(meta, i) for i in range(meta.num_row_groups)]
    return {"path": path, "rows": meta.num_rows, "row_groups": groups, "bytes": size, "bounds": bounds}, None


def _bounds(meta: Any, i: int) -> tuple[bool, int, int] | None:
    """(any reviewed, min PE, max k) of row group ``i`` from its column statistics, None if not stored."""
    rg = meta.row_group(i)
    stats = {}
    for j in range(rg.num_columns):
        col = rg.column(j)
        if col.path_in_schema in ("reviewed", "protein_existence", "n_properties"):
            st = col.statistics
            if st is None or not st.has_min_max:
                return None
            stats[col.path_in_schema] = st
    if len(stats) != 3:
        return None
    return bool(stats["reviewed"].max), int(stats["protein_existence"].min), int(stats["n_properties"].max)


def inspect_parquet(uri: str, storage_cfg: Any = None, *, max_threads: int = 16) -> ParquetInventory:
    """List and validate every Parquet file under ``uri``; raise :class:`ProtAnnoFileError` naming bad files."""
    if not uri:
        raise ProtAnnoFileError("data.uri is empty: set it to the ProtAnno Parquet folder (local path or s3://...)")
    uri = resolve_protanno(uri, storage_cfg)
    fs, path = filesystem(uri, storage_cfg)
    paths = list_parquet_files(fs, path, uri)
    with ThreadPoolExecutor(max_workers=max(1, min(max_threads, len(paths)))) as pool:
        results = list(pool.map(lambda p: _inspect(fs, p, uri), paths))
    problems = [msg for _, msg in results if msg]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ProtAnnoFileError(
            f"{len(problems)} of {len(paths)} Parquet file(s) under {redact(uri)} cannot be used: "
            + " | ".join(problems[:10]) + more
        )
    inv = ParquetInventory(uri=uri, fs=fs)
    for info, _ in results:
        assert info is not None
        bounds = info.pop("bounds")
        inv.files.append(info)
        for g, n in enumerate(info["row_groups"]):
            if n:
                inv.fragments.append(Fragment(info["path"], g, n, bounds[g]))
    return inv


def _damage(uri: str, fragment: Fragment, column: str | None, e: Exception) -> ProtAnnoFileError:
    where = f"row group {fragment.row_group}" + (f", column {column!r}" if column else "")
    err = ProtAnnoFileError(f"{display_path(uri, fragment.path)}: {where} is corrupt ({type(e).__name__}: "
                            f"{redact(str(e))[:300]}); rebuild or restore this shard")
    err.path, err.row_group, err.column = display_path(uri, fragment.path), fragment.row_group, column
    return err


def _find_bad_column(fs: Any, fragment: Fragment, columns: list[str]) -> tuple[str | None, Exception | None]:
    """Read and validate the columns one at a time to name the damaged one (only after a failure: cheap enough)."""
    try:
        with open_input(fs, fragment.path) as f:
            pf = pq.ParquetFile(f)
            for c in columns:
                try:
                    pf.read_row_group(fragment.row_group, columns=[c]).validate(full=True)
                except Exception as e:
                    return c, e
    except Exception as e:  # the file itself cannot be opened: no column to blame
        return None, e
    return None, None


def read_fragment(fs: Any, fragment: Fragment, columns: list[str], uri: str = "") -> pa.Table:
    """Only ``columns`` of one row group; damage raises one :class:`ProtAnnoFileError` naming the file, the row
    group and the column.

    ``validate(full=True)`` checks what Parquet decoding does not, notably that strings are valid UTF-8 (random
    bytes in a page otherwise surface later as a ``UnicodeDecodeError`` deep in a worker); it costs a pass over
    the bytes read, small next to decompression.
    """
    try:
        with open_input(fs, fragment.path) as f:
            # pre_buffer: the needed column chunks are fetched in a few coalesced, concurrent range reads
            table = pq.ParquetFile(f, pre_buffer=True).read_row_group(fragment.row_group, columns=columns)
        table.validate(full=True)
    except Exception as e:
        column, cause = _find_bad_column(fs, fragment, columns)
        raise _damage(uri, fragment, column, cause or e) from None
    if table.num_rows != fragment.num_rows:
        raise ProtAnnoFileError(
            f"{display_path(uri, fragment.path)}: row group {fragment.row_group} has {table.num_rows} rows, "
            f"its footer said {fragment.num_rows} (file changed while training?)"
        )
    return table


def needed_types(columns: list[str]) -> pa.Schema:
    """The ProtAnno types of ``columns`` (for empty results with the right schema)."""
    return pa.schema([PROTANNO_SCHEMA.field(c) for c in columns])


_WRAPPED = re.compile(r"ProtAnnoFileError: (?P<msg>[^\n]+)")
_WHERE = re.compile(r"^(?P<path>.+?): row group (?P<rg>\d+)(?:, column '(?P<col>[^']+)')? is corrupt")


def protanno_error_of(exc: BaseException) -> ProtAnnoFileError | None:
    """The :class:`ProtAnnoFileError` behind ``exc``, so a driver can print its one line instead of the wrapped
    tracebacks.

    Ray wraps task errors in ``RayTaskError``; Ray Data wraps a failing map function in ``UserCodeException``,
    whose pickled form keeps the original only as traceback text. The error is then rebuilt from that text
    (the message names shard, row group and column in a fixed form, see :func:`read_fragment`).
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    texts: list[str] = []
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ProtAnnoFileError):  # possibly Ray's RayTaskError(ProtAnnoFileError): take its cause
            cause = getattr(e, "cause", None)
            return cause if isinstance(cause, ProtAnnoFileError) else e
        texts.append(str(e))
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    for text in texts:
        m = _WRAPPED.search(re.sub(r"\x1b\[[0-9;]*m", "", text))
        if m:
            err = ProtAnnoFileError(m["msg"].strip())
            where = _WHERE.match(err.args[0])
            if where:
                err.path, err.row_group, err.column = where["path"], int(where["rg"]), where["col"]
            return err
    return None
