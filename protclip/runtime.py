"""Starting or joining Ray the same way from every job.

On a cluster (``ray job submit``) the job joins the existing cluster (``RAY_ADDRESS`` is set). On a laptop or CI
it starts a local instance bound to 127.0.0.1: Ray otherwise listens on the machine's outward address. The
switch that makes Ray use loopback must be set before ``import ray`` (see docs/stack notes), hence this module
is imported first by every entry point.
"""

from __future__ import annotations

import logging
import os

_log = logging.getLogger(__name__)


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
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    if num_cpus is None:
        num_cpus = max(4, os.cpu_count() or 1)
    ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=True,
             _node_ip_address="127.0.0.1")
    _log.info("started a local Ray instance on 127.0.0.1 with %d logical CPUs", num_cpus)
