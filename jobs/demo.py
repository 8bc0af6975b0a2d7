#!/usr/bin/env python
"""The embedded end-to-end demo: real UniProt samples -> ProtAnno (Ray Data) -> ProtCLIP pre-training
(Ray Train, 2 FSDP2 CPU workers) -> MLflow run in ./mlflow.db -> how to open the MLflow UI.

    python jobs/demo.py [--pretrain.train.max_steps 50]

Runs on a laptop or a 2-core CI machine in a few minutes: local Ray on 127.0.0.1, local storage, MLflow
SQLite, tiny towers. The same steps on a cluster are `jobs/build_protanno.py` and `jobs/pretrain.py`.
"""

import json
import sys
from pathlib import Path

import protclip.runtime  # noqa: F401  (must precede ray: loopback binding for local runs)
from protclip.cli import run_main, setup_logging

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    """Build ProtAnno from the real samples, pre-train the demo config, print where to look.

    usage: python jobs/demo.py [--build.<section>.<key> v ...] [--pretrain.<section>.<key> v ...]
    (build sections: build, storage, ray — jobs/configs/build_samples.yaml; pretrain: jobs/configs/demo.yaml)
    """
    from protclip.config import ConfigError, load_config
    from protclip.data.build import run_build
    from protclip.jobs_build import BuildJobConfig
    from protclip.runtime import init_ray
    from protclip.train.config import PretrainConfig
    from protclip.train.trainer import run_pretrain

    setup_logging()
    build_over = {}
    pre_over = {}
    it = iter(argv)
    for tok in it:
        key, _, val = tok[2:].partition("=")
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}")
        if not val:
            val = next(it, None)
            if val is None:
                raise ConfigError(f"override {tok} has no value")
        if key.startswith("build."):
            build_over[key[len("build."):]] = val
        elif key.startswith("pretrain."):
            pre_over[key[len("pretrain."):]] = val
        else:
            raise ConfigError(f"demo overrides start with --build. or --pretrain., got {tok}")
    bcfg = load_config(BuildJobConfig, REPO / "jobs/configs/build_samples.yaml", build_over)
    from protclip.paths import uniprot_samples_dat

    if bcfg.build.inputs == ["../shared/data/uniprot_samples/uniprot_samples.dat"]:
        bcfg.build.inputs = [str(uniprot_samples_dat())]  # works from any working directory
    pcfg = load_config(PretrainConfig, REPO / "jobs/configs/demo.yaml", pre_over)
    pcfg.data.uri = bcfg.build.output
    init_ray(num_cpus=bcfg.ray.num_cpus)

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


if __name__ == "__main__":
    sys.exit(run_main(main))
