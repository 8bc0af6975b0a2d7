"""The embedded end-to-end demo (``jobs/demo.py``): real UniProt samples -> ProtAnno (Ray Data) -> ProtCLIP
pre-training (Ray Train, 2 FSDP2 CPU workers) -> MLflow run in ./mlflow.db -> how to open the MLflow UI.

It chains the two recipes a cluster runs separately (:mod:`protclip.recipes.build_protanno`,
:mod:`protclip.recipes.pretrain`) with their shipped configs, so one command shows the whole path on a laptop.
"""

from __future__ import annotations

import json
from pathlib import Path

from protclip import runtime  # before anything imports ray: loopback binding for local runs
from protclip.cli import setup_logging
from protclip.config import ConfigError, load_config, parse_overrides
from protclip.data.build import run_build
from protclip.paths import REPO_ROOT, uniprot_samples_dat
from protclip.recipes.build_protanno import BuildJobConfig
from protclip.recipes.pretrain import PretrainConfig, run_pretrain

__all__ = ["split_overrides", "main"]

BUILD_CONFIG = REPO_ROOT / "jobs/configs/build_samples.yaml"
PRETRAIN_CONFIG = REPO_ROOT / "jobs/configs/demo.yaml"
#: build_samples.yaml's input, relative to the repository; replaced by the resolved path so any cwd works
SAMPLES_IN_CONFIG = "../shared/data/uniprot_samples/uniprot_samples.dat"


def split_overrides(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``--build.<section>.<key> v`` and ``--pretrain.<section>.<key> v`` -> (build, pretrain) overrides."""
    build: dict[str, str] = {}
    pretrain: dict[str, str] = {}
    for key, val in parse_overrides(argv).items():
        job, _, rest = key.partition(".")
        if job == "build" and rest:
            build[rest] = val
        elif job == "pretrain" and rest:
            pretrain[rest] = val
        else:
            raise ConfigError(f"demo overrides start with --build. or --pretrain., got --{key}")
    return build, pretrain


def main(argv: list[str]) -> int:
    """Build ProtAnno from the real samples, pre-train the demo config, print where to look.

    usage: python jobs/demo.py [--build.<section>.<key> v ...] [--pretrain.<section>.<key> v ...]
    (build sections: build, storage, ray — jobs/configs/build_samples.yaml; pretrain: jobs/configs/demo.yaml)
    """
    setup_logging()
    build_over, pre_over = split_overrides(argv)
    bcfg = load_config(BuildJobConfig, BUILD_CONFIG, build_over)
    if bcfg.build.inputs == [SAMPLES_IN_CONFIG]:
        bcfg.build.inputs = [str(uniprot_samples_dat())]
    pcfg = load_config(PretrainConfig, PRETRAIN_CONFIG, pre_over)
    pcfg.data.uri = bcfg.build.output
    runtime.init_ray(num_cpus=bcfg.ray.num_cpus)

    print("== 1/2 building ProtAnno from", ", ".join(bcfg.build.inputs), flush=True)
    built = run_build(bcfg.build, bcfg.storage)
    m = built.manifest
    print(f"   {m['rows']} rows in {len(m['shards'])} shards, {m['malformed']} malformed -> {bcfg.build.output}")

    print("== 2/2 pre-training ProtCLIP (demo config)", flush=True)
    result = run_pretrain(pcfg)
    final = {k: round(v, 4) for k, v in result.metrics.items() if isinstance(v, int | float)}
    print(json.dumps({"mlflow_run_id": result.run_id, "checkpoint": result.checkpoint_path,
                      "export": result.export_uri, "final": final}, indent=1, default=str))
    uri = pcfg.tracking.uri or "sqlite:///" + str(Path.cwd() / "mlflow.db")
    print("\nOpen the MLflow UI (needs the `ui` extra, already in `dev`):")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print("  then browse http://127.0.0.1:5000 -> experiment", pcfg.tracking.experiment, "-> run", result.run_id)
    return 0
