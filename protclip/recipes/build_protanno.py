"""The ProtAnno build job (``jobs/build_protanno.py``): its root config, Ray start, the build, a JSON summary."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field

from protclip import runtime  # before anything imports ray: loopback binding for local runs
from protclip.cli import run_main, setup_logging
from protclip.config import ConfigError, cli_config
from protclip.data.build import BuildConfig, run_build
from protclip.storage import StorageConfig

_log = logging.getLogger("protclip.build")

__all__ = ["RayConfig", "BuildJobConfig", "main", "console_main"]


@dataclass(kw_only=True)
class RayConfig:
    """How to reach Ray: ``address`` (or $RAY_ADDRESS) joins a cluster; otherwise a local loopback instance."""

    address: str | None = None
    num_cpus: int | None = None  # local instance only; default max(4, cores) so Ray Data never starves


@dataclass(kw_only=True)
class BuildJobConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def main(argv: list[str]) -> int:
    """Build ProtAnno Parquet from raw UniProtKB files.

    usage: python jobs/build_protanno.py --config jobs/configs/build_samples.yaml [--build.output DIR] [--key value ...]
    """
    setup_logging()
    cfg = cli_config(BuildJobConfig, argv)
    if not cfg.build.inputs:
        raise ConfigError("build.inputs is empty: give at least one UniProt .dat/.dat.gz/.tsv file, folder or glob")
    runtime.init_ray(num_cpus=cfg.ray.num_cpus, address=cfg.ray.address)
    result = run_build(cfg.build, cfg.storage)
    m = result.manifest
    summary = {k: m[k] for k in ("rows", "seen", "parsed", "malformed", "malformed_by_reason", "checksum")}
    summary["shards"] = len(m["shards"])
    summary["output"] = cfg.build.output
    print(json.dumps(summary, indent=2))
    for e in result.errors[:20]:
        _log.warning("malformed record: %s:%s (byte %s, accession %s): %s", e["source"], e["line"],
                     e["byte_offset"], e["accession"] or "?", e["reason"])
    if len(result.errors) > 20:
        _log.warning("... %d more malformed records in %s/malformed.jsonl", len(result.errors) - 20, cfg.build.output)
    return 0


def console_main() -> None:
    """The ``protclip-build`` console script (pyproject.toml): ``main`` with one-line errors and exit codes."""
    sys.exit(run_main(main))
