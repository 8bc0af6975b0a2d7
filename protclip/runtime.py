"""Starting or joining Ray the same way from every job.

On a cluster (``ray job submit``) the job joins the existing cluster (``RAY_ADDRESS`` is set). On a laptop or CI
it starts a local instance bound to 127.0.0.1: Ray otherwise listens on the machine's outward address. The
switch that makes Ray use loopback must be set before ``import ray`` (see docs/stack notes), hence this module
is imported first by every entry point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

_log = logging.getLogger(__name__)


class RayStartError(RuntimeError):
    """Ray could not be started or joined (start-up timeout, unreachable address): exit code 6."""


def prefer_loopback() -> None:
    """Make a locally started Ray bind to 127.0.0.1 (no-op when joining a cluster)."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


prefer_loopback()


def init_ray(num_cpus: int | None = None, address: str | None = None, runtime_env: dict | None = None) -> None:
    """Join ``address``/``RAY_ADDRESS`` or start a local instance on loopback; idempotent.

    ``num_cpus`` over-subscribes logical CPUs on small machines: with 2 cores, 2 training workers and Ray Data
    tasks would otherwise deadlock waiting for a CPU (observed; see README "Troubleshooting").
    """
    import sys

    import ray

    if not sys.stdout.isatty():  # logs and CI: Ray Data's redrawn progress bars are noise there
        ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _start(f"could not join the Ray cluster at {address}", lambda: ray.init(
            address=address, runtime_env=runtime_env, log_to_driver=True))
        refuse_relative_paths_on_cluster(sum(1 for n in ray.nodes() if n.get("Alive")))
        return
    if num_cpus is None:
        num_cpus = max(4, os.cpu_count() or 1)
    # address="local": always a new instance of our own, even when another local cluster is running (plain
    # ray.init() would join that one and then refuse num_cpus)
    _start("could not start a local Ray instance on 127.0.0.1", lambda: ray.init(
        address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=True,
        _node_ip_address="127.0.0.1"))
    _log.info("started a local Ray instance on 127.0.0.1 with %d logical CPUs", num_cpus)


def _start(what: str, init: Callable[[], object]) -> None:
    """Run ``ray.init``; its failures (start-up timeouts, refused connections) become one RayStartError line."""
    try:
        init()
    except Exception as e:  # ray raises RuntimeError, ConnectionError, TimeoutError, its own RaySystemError...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RayStartError(f"{what}: {type(e).__name__}: {first} (Ray's processes did not come up: check free "
                            "memory and /tmp space, stale Ray processes (`ray stop`), and the machine's load)") from e


def refuse_relative_paths_on_cluster(alive_nodes: int) -> None:
    """On a cluster of several nodes a relative local path names a different folder on each node's own disk:
    refuse the ones the configs of this process gave (:func:`protclip.local_paths.relative_paths_seen`)."""
    from protclip.config import ConfigError
    from protclip.local_paths import relative_paths_seen

    rel = relative_paths_seen()
    if alive_nodes > 1 and rel:
        p = rel[0]
        raise ConfigError(f"{p.key}: {p.given!r} is a relative local path, but this Ray cluster has {alive_nodes} "
                          "nodes whose local disks are not shared: give an s3:// URI or an absolute path on a "
                          "shared file system", p.key)
