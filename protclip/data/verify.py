"""Check the shards of a ProtAnno build against its manifest before a run reads them.

Why: Parquet damage in a column the trainer does not read (or in pages a footer check cannot see) otherwise
passes unnoticed, and damage it does read surfaces hours in. The build records every shard's size and SHA-256
(:mod:`protclip.data.build`); comparing them costs one listing plus, for the hashed shards, one streaming read
each, spread over Ray tasks so a large data set is hashed by the whole cluster in parallel.

Modes (``data.verify``): ``full`` hashes every shard, ``sampled`` hashes ``sample`` of them (seeded; all when
there are fewer), ``size`` compares sizes only, ``off`` skips. Folders without a build manifest (plain Parquet)
are not checked. Listing and size comparison are plain fsspec; only the hashing is a Ray task.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from protclip import storage
from protclip.data.parquet_files import ProtAnnoFileError, resolve_protanno

_log = logging.getLogger(__name__)

VERIFY_MODES = ("full", "sampled", "size", "off")
_READ_BYTES = 8 << 20  # hashing read size: large sequential reads, bounded memory per task


@dataclass
class VerifyReport:
    """What was checked: mode, shards compared by size and by hash, seconds."""

    mode: str
    shards: int = 0
    sized: int = 0
    hashed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""  # why nothing was checked ("" when something was)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "shards": self.shards, "sized": self.sized, "hashed": len(self.hashed),
                "seconds": round(self.seconds, 2), "skipped": self.skipped}


def sha256_of(uri: str, names: list[str], storage_cfg: storage.StorageConfig | None) -> dict[str, str]:
    """SHA-256 of each named file under ``uri`` (run as a Ray task; streams the file, never holds it)."""
    fs, base = storage.filesystem(uri, storage_cfg)
    out: dict[str, str] = {}
    for name in names:
        h = hashlib.sha256()
        with fs.open(f"{base.rstrip('/')}/{name}", "rb") as f:
            while chunk := f.read(_READ_BYTES):
                h.update(chunk)
        out[name] = h.hexdigest()
    return out


def choose_hashed(names: list[str], mode: str, sample: int, seed: int) -> list[str]:
    """The shards to hash in ``mode``: all (full), a seeded sample (sampled), none (size/off)."""
    if mode == "full" or (mode == "sampled" and len(names) <= sample):
        return sorted(names)
    if mode == "sampled":
        return sorted(random.Random(seed).sample(sorted(names), sample))
    return []


def compare_sizes(manifest: dict[str, Any], on_storage: dict[str, int], uri: str) -> list[str]:
    """Problems between the manifest's shards and the files found: missing, extra, different size."""
    problems: list[str] = []
    want = {s["name"]: int(s["bytes"]) for s in manifest.get("shards", [])}
    shown = storage.redact(uri)
    for name, size in sorted(want.items()):
        if name not in on_storage:
            problems.append(f"{shown}/{name}: missing (listed in manifest.json)")
        elif on_storage[name] != size:
            problems.append(f"{shown}/{name}: {on_storage[name]} bytes, manifest.json says {size}")
    for name in sorted(set(on_storage) - set(want)):
        problems.append(f"{shown}/{name}: not in manifest.json (a shard from another build?)")
    return problems


def _listing(uri: str, storage_cfg: storage.StorageConfig | None) -> dict[str, int]:
    fs, base = storage.filesystem(uri, storage_cfg)
    return {str(e["name"]).rsplit("/", 1)[-1]: int(e["size"]) for e in fs.ls(base, detail=True)
            if e["type"] == "file" and str(e["name"]).endswith(".parquet")
            and not str(e["name"]).rsplit("/", 1)[-1].startswith(("_", "."))}


def _hash_in_ray(uri: str, names: list[str], storage_cfg: storage.StorageConfig | None,
                 max_tasks: int) -> dict[str, str]:
    """Hash ``names`` in up to ``max_tasks`` Ray tasks (a few shards each); errors come back as one line."""
    import ray

    if not names:
        return {}
    n_tasks = max(1, min(max_tasks, len(names)))
    groups = [names[i::n_tasks] for i in range(n_tasks)]
    task = ray.remote(num_cpus=0.25, max_retries=2)(sha256_of)
    refs = [task.remote(uri, g, storage_cfg) for g in groups]
    out: dict[str, str] = {}
    try:
        for part in ray.get(refs):
            out.update(part)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        raise ProtAnnoFileError(f"{storage.redact(uri)}: cannot read a shard to verify it "
                                f"({type(cause or e).__name__}: {storage.redact(str(cause or e)).splitlines()[0]})"
                                ) from None
    return out


def verify_shards(uri: str, storage_cfg: storage.StorageConfig | None = None, *, mode: str = "sampled",
                  sample: int = 16, seed: int = 0, max_tasks: int = 64) -> VerifyReport:
    """Compare the shards of the ProtAnno output at ``uri`` with its manifest; raise one
    :class:`ProtAnnoFileError` naming every bad shard. Needs a Ray instance unless ``mode`` is size/off."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"data.verify must be one of {VERIFY_MODES}, got {mode!r}")
    t0 = time.time()
    report = VerifyReport(mode=mode)
    if mode == "off":
        report.skipped = "data.verify is off"
        return report
    folder = resolve_protanno(uri, storage_cfg)
    from protclip.data.holdout import read_protanno_manifest

    manifest = read_protanno_manifest(folder, storage_cfg)
    if not manifest or "shards" not in manifest:
        report.skipped = "no build manifest (not a ProtAnno build folder)"
        _log.info("data.verify: %s has no build manifest; shards not verified", storage.redact(uri))
        return report
    on_storage = _listing(folder, storage_cfg)
    problems = compare_sizes(manifest, on_storage, folder)
    report.shards = len(manifest["shards"])
    report.sized = len(on_storage)
    if not problems:
        want = {s["name"]: s["sha256"] for s in manifest["shards"]}
        report.hashed = choose_hashed(list(want), mode, sample, seed)
        got = _hash_in_ray(folder, report.hashed, storage_cfg, max_tasks)
        problems = [f"{storage.redact(folder)}/{n}: SHA-256 differs from manifest.json (the file changed or is "
                    f"damaged)" for n in report.hashed if got.get(n) != want[n]]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ProtAnnoFileError(f"{len(problems)} shard(s) of {storage.redact(uri)} do not match its manifest: "
                                + " | ".join(problems[:10]) + more + "; rebuild or restore them, or set "
                                "data.verify off to train anyway")
    report.seconds = time.time() - t0
    _log.info("data.verify %s: %d shards sized, %d hashed in %.1f s", mode, report.sized, len(report.hashed),
              report.seconds)
    return report
