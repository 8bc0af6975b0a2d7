"""The embedded end-to-end demo (``jobs/demo.py``, README command 1): real UniProt entries -> ProtAnno with a
homology-aware held-out split (Ray Data + MMseqs2) -> ProtCLIP pre-training of the real small towers (ESM-2 8M +
MiniLM-L6, Ray Train, 2 FSDP2 CPU workers) -> evaluation of the untrained and the trained model on the held-out
test clusters (Ray tasks) -> a before/after table, printed and logged to the MLflow run.

It chains the recipes a cluster runs separately (:mod:`protclip.recipes.build_protanno`,
:mod:`protclip.recipes.pretrain`) with their shipped configs (``jobs/configs/build_corpus.yaml``,
``jobs/configs/real_small.yaml``), so one command shows the whole path on a laptop. The console shows progress
lines and the table; Ray, torch and MLflow output goes to ``<run folder>/logs/demo-<time>.log``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from protclip import runtime  # before anything imports ray: loopback binding for local runs
from protclip.cli import setup_logging
from protclip.config import ConfigError, load_config, parse_overrides, resolve_paths
from protclip.console import Console, quiet_console
from protclip.paths import REPO_ROOT
from protclip.preflight import TrackingError
from protclip.recipes.build_protanno import BuildJobConfig
from protclip.recipes.pretrain import PretrainConfig
from protclip.runtime import RayStartError
from protclip.storage import StorageError

__all__ = ["split_overrides", "main"]

BUILD_CONFIG = REPO_ROOT / "jobs/configs/build_corpus.yaml"
PRETRAIN_CONFIG = REPO_ROOT / "jobs/configs/real_small.yaml"
#: the eval suites of real_small.yaml that read the held-out split point at the build's output
PROTANNO_PLACEHOLDER = "outputs/protanno_corpus"


def split_overrides(argv: list[str]) -> tuple[dict[str, str], dict[str, str], bool]:
    """``--build.<section>.<key> v`` / ``--pretrain.<section>.<key> v`` / ``--verbose`` ->
    (build overrides, pretrain overrides, verbose)."""
    verbose = "--verbose" in argv
    build: dict[str, str] = {}
    pretrain: dict[str, str] = {}
    for key, val in parse_overrides([a for a in argv if a != "--verbose"]).items():
        job, _, rest = key.partition(".")
        if job == "build" and rest:
            build[rest] = val
        elif job == "pretrain" and rest:
            pretrain[rest] = val
        else:
            raise ConfigError(f"demo options are --verbose, --build.<section>.<key> and --pretrain.<section>.<key>; "
                              f"got --{key}")
    return build, pretrain, verbose


def _configs(argv: list[str]) -> tuple[BuildJobConfig, PretrainConfig, bool]:
    build_over, pre_over, verbose = split_overrides(argv)
    bcfg = load_config(BuildJobConfig, BUILD_CONFIG, build_over, cli_prefix="build.")
    pcfg = load_config(PretrainConfig, PRETRAIN_CONFIG, pre_over, cli_prefix="pretrain.")
    resolve_paths(bcfg)  # every local path against the launching directory, before anything reaches Ray
    pcfg.data.uri = bcfg.build.output
    for suite in pcfg.eval.suites:  # the suites scoring held-out rows read the ProtAnno this demo builds
        if suite.config.get("path") == PROTANNO_PLACEHOLDER:
            suite.config["path"] = bcfg.build.output
    resolve_paths(pcfg)
    return bcfg, pcfg, verbose


def _log_path(pcfg: PretrainConfig) -> str:
    """``<run folder>/logs/demo-<UTC time>.log`` when the run folder is local, else ``./logs/...``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    root = pcfg.storage.storage_path
    base = os.path.join(root, pcfg.storage.name) if "://" not in root else os.path.abspath("logs")
    return os.path.join(base, "logs", f"demo-{stamp}.log")


def _summary(con: Console, pcfg: PretrainConfig, run_id: str | None, tracking_uri: str | None,
             export_uri: str | None, log_path: str | None) -> None:
    from protclip.eval.compare import DEMO_ROWS, before_after, fetch_history, format_table
    from protclip.mlflow_server import ui_command
    from protclip.tracking import RunLogger, mlflow_client

    if not run_id:
        con.line("MLflow tracking is off: no before/after table")
        return
    client = mlflow_client(tracking_uri)
    rows = before_after(fetch_history(client, run_id, [r.key for r in DEMO_ROWS]
                                      + [r.reference_key for r in DEMO_ROWS if r.reference_key]))
    table = format_table(rows)
    logger = RunLogger(run_id, tracking_uri)
    logger.log_text(table + "\n", "summary/before_after.md")
    logger.log_dict({"rows": rows}, "summary/before_after.json")
    con.line("")
    con.line("Held-out test clusters (no test protein has a training homologue at 30% identity / 80% coverage):")
    con.line(table)
    con.line("")
    con.line(f"run folder:   {os.path.join(pcfg.storage.storage_path, pcfg.storage.name)}")
    con.line(f"export:       {export_uri}")
    if log_path:
        con.line(f"full log:     {log_path}")
    con.line(f"MLflow run:   {run_id} (experiment {pcfg.tracking.experiment}) in {tracking_uri}")
    con.line(f"MLflow UI:    {ui_command(tracking_uri)}")


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _with_prefix(e: ConfigError) -> ConfigError:
    """The pre-training job's advice names its own flags (``--storage.name``); the demo's are ``--pretrain.*``."""
    return type(e)(str(e).replace(" --storage.name", " --pretrain.storage.name"), e.key)


def _check_rerun(pcfg: PretrainConfig) -> None:
    """Refuse, before building anything, a rerun whose config cannot continue the checkpoint in its run folder
    (e.g. another ``--pretrain.train.max_steps``); the same check runs again once the data is counted."""
    from protclip.train.run_folder import peek_latest_state, resume_plan

    try:
        resume_plan(pcfg, peek_latest_state(pcfg), pcfg.train.max_steps)
    except ConfigError as e:
        raise _with_prefix(e) from None


def main(argv: list[str]) -> int:
    """Build ProtAnno from the real entries, pre-train the real small towers, print the before/after table.

    usage: python jobs/demo.py [--verbose] [--build.<section>.<key> v ...] [--pretrain.<section>.<key> v ...]
    (build sections: build, storage, ray — jobs/configs/build_corpus.yaml; pretrain sections: data, model, loss,
    train, storage, tracking, eval — jobs/configs/real_small.yaml). --verbose keeps Ray's output on the console.
    """
    bcfg, pcfg, verbose = _configs(argv)
    log_path = None if verbose else _log_path(pcfg)
    with quiet_console(log_path, expected=(ConfigError, StorageError, TrackingError, RayStartError)) as con:
        try:
            setup_logging()
            from protclip.data.build import run_build
            from protclip.recipes.pretrain import run_pretrain
            from protclip.tracking import resolve_tracking_uri

            t0 = time.monotonic()
            _check_rerun(pcfg)  # a rerun that cannot resume the run folder: one line now, not after the build
            if log_path:
                con.line(f"ProtCLIP demo (Ray, torch and MLflow output: {log_path})")
            runtime.init_ray(num_cpus=bcfg.ray.num_cpus)
            con.line("== 1/3 ProtAnno from " + ", ".join(Path(i).name for i in bcfg.build.inputs))
            m = run_build(bcfg.build, bcfg.storage).manifest
            ho = m.get("holdout") or {}
            rows = ho.get("rows") or {}
            clusters = ho.get("clusters") or {}
            con.line(f"   {m['rows']} rows, {m['malformed']} malformed -> {bcfg.build.output}")
            if ho:
                con.line(f"   held out by {ho.get('mode')}: {ho.get('n_clusters', '?')} clusters; rows train/val/test "
                         f"{rows.get('train', '?')}/{rows.get('val', '?')}/{rows.get('test', '?')} (clusters "
                         f"{clusters.get('train', '?')}/{clusters.get('val', '?')}/{clusters.get('test', '?')})")
            con.line(f"== 2/3 pre-training {pcfg.model.protein_model} + {pcfg.model.text_model} "
                     f"({pcfg.train.num_workers} workers, " + (
                         f"packed micro-batches of {pcfg.data.max_tokens} protein tokens"
                         if pcfg.data.batching == "packed" else f"global batch {pcfg.global_batch_size}") + ")")
            try:
                result = run_pretrain(pcfg, console=con)
            except ConfigError as e:
                raise _with_prefix(e) from None
            con.line(f"== 3/3 before vs after pre-training ({(time.monotonic() - t0) / 60:.1f} min so far)")
            tracking_uri = resolve_tracking_uri(pcfg.tracking.uri) if pcfg.tracking.enabled else None
            _summary(con, pcfg, result.run_id, tracking_uri, result.export_uri, log_path)
            con.line(f"done in {(time.monotonic() - t0) / 60:.1f} min")
        finally:
            _stop_ray()  # inside the block: Ray's log forwarding stops before the terminal is handed back
    return 0
