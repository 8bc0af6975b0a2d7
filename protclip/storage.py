"""Storage URIs (local paths, ``file://``, ``s3://``, ``gs://``) resolved to fsspec/pyarrow file systems.

Why one module: every job reads and writes through it, so credentials and S3-compatible endpoints (MinIO, moto,
Ceph) are configured in one place, taken from the config or the standard environment variables, and never
printed. ``redact`` scrubs secret values out of any text that may reach a log, MLflow or an artifact.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any

import fsspec

SECRET_FIELDS = ("access_key_id", "secret_access_key", "session_token")
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS_JSON")
REDACTED = "***"


@dataclass(kw_only=True)
class StorageConfig:
    """Object-storage access. Leave credentials empty to use the environment / instance role (recommended)."""

    endpoint_url: str | None = None  # S3-compatible endpoint; default: $AWS_ENDPOINT_URL or AWS itself
    region: str | None = None  # default: $AWS_DEFAULT_REGION
    access_key_id: str | None = None  # prefer env AWS_ACCESS_KEY_ID or an IAM role; never logged
    secret_access_key: str | None = None  # prefer env AWS_SECRET_ACCESS_KEY; never logged
    session_token: str | None = None
    anonymous: bool = False  # public buckets

    def __repr__(self) -> str:  # keep secrets out of tracebacks and log lines
        shown = {f.name: (REDACTED if f.name in SECRET_FIELDS and getattr(self, f.name) else getattr(self, f.name))
                 for f in dataclasses.fields(self)}
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # @dataclass on a subclass (e.g. RunStorageConfig) would generate a repr that prints the secrets; a
        # __repr__ already in the class dict is one dataclass leaves alone
        super().__init_subclass__(**kwargs)
        cls.__repr__ = StorageConfig.__repr__  # type: ignore[method-assign]

    def resolved(self) -> StorageConfig:
        """A copy with endpoint, region and credentials taken from this process's environment where unset.

        Remote tasks (Ray Data readers, writers) get this copy, so they do not depend on their own environment
        matching the driver's (env vars set after ``ray.init`` never reach workers).
        """
        env = os.environ
        return dataclasses.replace(
            self,
            endpoint_url=self.resolved_endpoint(),
            region=self.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"),
            access_key_id=self.access_key_id or env.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY"),
            session_token=self.session_token or env.get("AWS_SESSION_TOKEN"),
        )

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def scheme_of(uri: str) -> str:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return m.group(1).lower() if m else "file"


def is_remote(uri: str) -> bool:
    return scheme_of(uri) not in ("file", "local")


def s3fs_kwargs(cfg: StorageConfig | None) -> dict[str, Any]:
    """Keyword arguments for ``s3fs.S3FileSystem`` (empty credentials -> botocore's default chain)."""
    cfg = cfg or StorageConfig()
    kw: dict[str, Any] = {}
    if cfg.anonymous:
        kw["anon"] = True
    if cfg.access_key_id:
        kw["key"] = cfg.access_key_id
    if cfg.secret_access_key:
        kw["secret"] = cfg.secret_access_key
    if cfg.session_token:
        kw["token"] = cfg.session_token
    client_kwargs: dict[str, Any] = {}
    ep = cfg.resolved_endpoint()
    if ep:
        client_kwargs["endpoint_url"] = ep
    region = cfg.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        kw["client_kwargs"] = client_kwargs
    return kw


def filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for a URI; ``path`` is what that file system expects (no scheme for s3)."""
    scheme = scheme_of(uri)
    if scheme in ("file", "local"):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if scheme in ("s3", "s3a"):
        import s3fs

        fs = s3fs.S3FileSystem(**s3fs_kwargs(cfg))
        return fs, uri.split("://", 1)[1]
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def pyarrow_filesystem(uri: str, cfg: StorageConfig | None = None):
    """A pyarrow FileSystem for Ray Data / pyarrow.parquet (wraps the fsspec one so settings are shared)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri, cfg)
    if scheme_of(uri) in ("file", "local"):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    """Join URI path segments with '/' (os.path.join for local paths)."""
    if is_remote(uri):
        return "/".join([uri.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(uri, *parts)


def expand_files(uri: str, cfg: StorageConfig | None = None
                 ) -> tuple[fsspec.AbstractFileSystem, str, list[str] | None]:
    """``(fs, prefix, paths)`` of the files ``uri`` names: the file itself, every file of a folder except hidden
    and ``_``-prefixed ones, or a glob's matches, sorted; ``paths`` is None when nothing exists at ``uri``.
    ``prefix + path`` is a URI of ``uri``'s scheme. Callers raise their own "not found" / "no files" errors."""
    fs, path = filesystem(uri, cfg)
    scheme = scheme_of(uri)
    prefix = "" if scheme in ("file", "local") else f"{scheme}://"
    if any(c in path for c in "*?["):
        return fs, prefix, sorted(fs.glob(path))
    if fs.isdir(path):
        return fs, prefix, sorted(p for p in fs.find(path) if not os.path.basename(p).startswith((".", "_")))
    return fs, prefix, ([path] if fs.exists(path) else None)


def check_access(uri: str, cfg: StorageConfig | None = None, *, write: bool = False) -> None:
    """Fail early with a readable message when a bucket/folder is missing or credentials are wrong."""
    fs, path = filesystem(uri, cfg)
    try:
        if write:
            if not is_remote(uri):
                os.makedirs(path, exist_ok=True)
                probe = os.path.join(path, ".protclip_write_probe")
                with open(probe, "w") as f:
                    f.write("ok")
                os.remove(probe)
            else:
                bucket = path.split("/", 1)[0]
                if not fs.exists(bucket):
                    raise StorageError(f"bucket '{bucket}' of {uri} does not exist or is not visible with these credentials")
        elif not fs.exists(path):
            raise StorageError(f"{uri}: no such file or folder")
    except StorageError:
        raise
    except PermissionError as e:
        if not is_remote(uri):
            what = "not writable (read-only folder or file system, or owned by another user)" if write else \
                "not readable by this user"
            raise StorageError(f"{uri}: local path {path} is {what}: {e.strerror or e}") from None
        raise StorageError(f"{uri}: access denied ({type(e).__name__}); check credentials and bucket policy") from None
    except OSError as e:
        raise StorageError(f"{uri}: cannot access: {redact(str(e))}") from None
    except Exception as e:  # botocore errors (NoCredentialsError, ClientError) are not OSError
        raise StorageError(f"{uri}: cannot access ({type(e).__name__}): {redact(str(e))}") from None


class StorageError(RuntimeError):
    """Storage is missing, unreadable or unwritable; the message names the URI and never a secret."""


def _secret_values(extra: list[str] | None = None) -> list[str]:
    vals = [os.environ.get(k) for k in SECRET_ENV]
    vals += list(extra or [])
    return [v for v in vals if v and len(v) >= 4]


def redact(text: str, extra_secrets: list[str] | None = None) -> str:
    """Replace known secret values (env credentials, given extras, URL passwords) in ``text``."""
    out = text
    for v in sorted(_secret_values(extra_secrets), key=len, reverse=True):
        out = out.replace(v, REDACTED)
    out = re.sub(r"(://[^:/@\s]+:)([^@\s]+)(@)", rf"\g<1>{REDACTED}\g<3>", out)  # user:password@host
    return out


def redact_mapping(d: dict[str, Any]) -> dict[str, Any]:
    """Flat-dict redaction for MLflow params: secret-looking keys get '***', values are scrubbed."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        leaf = k.rsplit(".", 1)[-1].lower()
        if leaf in SECRET_FIELDS or any(s in leaf for s in ("secret", "password", "token", "api_key")):
            out[k] = REDACTED if v not in (None, "") else v
        elif isinstance(v, str):
            out[k] = redact(v)
        else:
            out[k] = v
    return out
