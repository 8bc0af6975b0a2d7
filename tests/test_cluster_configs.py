"""Every file under cluster/ parses and validates offline: Ray launcher configs against Ray's own JSON schema,
KubeRay manifests against the ray.io/v1 required fields, and the cross-references between them (secrets,
volumes, image, versions, job entry points) agree."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from protclip.cluster_manifests import (
    GPU_RESOURCE,
    load_yaml_documents,
    validate_file,
    validate_kuberay,
    validate_launcher_config,
)
from protclip.paths import REPO_ROOT
from tests.helpers.cluster_files import jobs_tracking_uri, mlflow_k8s_allowed_hosts, mlflow_k8s_docs

CLUSTER = REPO_ROOT / "cluster"
LAUNCHERS = {"aws": CLUSTER / "aws" / "ray-cluster.yaml", "gcp": CLUSTER / "gcp" / "ray-cluster.yaml"}
KUBERAY = sorted((CLUSTER / "kuberay").glob("ray*.yaml"))
ALL_YAML = sorted(CLUSTER.rglob("*.yaml"))


def _kuberay_docs() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in KUBERAY}


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _pod_templates(doc: dict) -> list[tuple[str, dict]]:
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")
    if spec is None:
        return []
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


# ------------------------------------------------------------------------------------------------ parsing


def test_cluster_folder_has_the_expected_files():
    names = {p.relative_to(CLUSTER).as_posix() for p in CLUSTER.rglob("*") if p.is_file()}
    for expected in ("runtime_env.yaml", "Dockerfile", "Dockerfile.dockerignore", "constraints-gpu.txt",
                     "aws/ray-cluster.yaml", "gcp/ray-cluster.yaml", "kuberay/raycluster.yaml",
                     "kuberay/rayjob-pretrain.yaml", "kuberay/rayjob-evaluate.yaml",
                     "kuberay/rayjob-finetune-lora.yaml", "kuberay/storage.yaml", "kuberay/secrets.example.yaml",
                     "mlflow/serve_local.sh", "mlflow/docker-compose.yaml", "mlflow/k8s.yaml", "mlflow/Dockerfile"):
        assert expected in names


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_every_yaml_parses_and_validates(path):
    docs = load_yaml_documents(path)
    assert docs and all(isinstance(d, dict) for d in docs)
    if len(docs) == 1:
        assert yaml.safe_load(path.read_text()) == docs[0]
    assert validate_file(path) == []


# ------------------------------------------------------------------------------------------------ ray up


@pytest.mark.parametrize("cloud", sorted(LAUNCHERS))
def test_launcher_config_validates_against_rays_schema(cloud):
    raw = yaml.safe_load(LAUNCHERS[cloud].read_text())
    jsonschema.validate(raw, _ray_schema())  # the file as written (Ray's schema forbids unknown keys)
    filled = validate_launcher_config(raw)  # after Ray fills its provider defaults, with Ray's own checks
    assert filled["provider"]["type"] == cloud
    types = filled["available_node_types"]
    head = types[filled["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no tasks on the head
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    cpu = [name for name, t in types.items() if name != filled["head_node_type"] and not t["resources"].get("GPU")]
    assert len(gpu) == 1 and gpu[0]["resources"]["GPU"] == 8, "one 8-GPU (H100) node type"
    assert gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] * 8 >= 32, "autoscaling up to >= 32 GPUs"
    assert cpu, "a CPU node type for Ray Data"
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != filled["head_node_type"]) <= \
        filled["max_workers"]
    assert filled["docker"]["image"].endswith("protclip:0.1.0-cuda12")
    start = " ".join(filled["head_start_ray_commands"])
    assert "--object-store-memory" in start and "--num-cpus=0" in start
    assert "RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION" in " ".join(filled["worker_start_ray_commands"])


@pytest.mark.parametrize("mutate, exc", [
    (lambda c: c.update(max_worker=3), jsonschema.ValidationError),  # typo at the top level
    (lambda c: c["docker"].update(imagee="x"), jsonschema.ValidationError),
    (lambda c: next(t for t in c["available_node_types"].values() if "min_workers" in t).update(
        resources={"GPU": "eight"}), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="nope"), ValueError),
    (lambda c: c.update(max_workers=1), ValueError),  # smaller than a node type's max_workers
])
def test_launcher_validation_catches_mistakes(mutate, exc):
    cfg = copy.deepcopy(yaml.safe_load(LAUNCHERS["aws"].read_text()))
    mutate(cfg)
    with pytest.raises(exc):
        validate_launcher_config(cfg)


# ------------------------------------------------------------------------------------------------ KubeRay


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_is_valid(path):
    doc = yaml.safe_load(path.read_text())
    assert validate_kuberay(doc) == []
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")


def test_kuberay_resources_volumes_and_secrets():
    secrets_docs = load_yaml_documents(CLUSTER / "kuberay" / "secrets.example.yaml")
    defined = {(d["kind"], d["metadata"]["name"]): d for d in secrets_docs}
    secret_keys = {name: set(d.get("stringData", {})) for (kind, name), d in defined.items() if kind == "Secret"}
    pvcs = {d["metadata"]["name"] for d in load_yaml_documents(CLUSTER / "kuberay" / "storage.yaml")}
    images = set()
    gpu_groups = 0
    for name, doc in _kuberay_docs().items():
        for group, tpl in _pod_templates(doc):
            spec = tpl["spec"]
            assert ("ServiceAccount", spec["serviceAccountName"]) in defined, (name, group)
            c = spec["containers"][0]
            images.add(c["image"])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert {"/dev/shm", "/mnt/shared", "/tmp/ray"} <= set(mounts), (name, group)
            vols = {v["name"]: v for v in spec["volumes"]}
            assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert vols[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] in pvcs
            for ref in c.get("envFrom", []):
                assert ("ConfigMap", ref["configMapRef"]["name"]) in defined
            for e in c["env"]:
                ref = e["valueFrom"]["secretKeyRef"]
                assert ref["name"] in secret_keys, (name, e["name"])
                assert ref["key"] in secret_keys[ref["name"]] or ref.get("optional") is True, (name, e["name"])
            lim = c["resources"]["limits"]
            if GPU_RESOURCE in lim:
                gpu_groups += 1
                assert lim[GPU_RESOURCE] == "8" and c["resources"]["requests"][GPU_RESOURCE] == "8"
                assert any(t["key"] == GPU_RESOURCE for t in spec["tolerations"])
                shm = vols[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"]
                assert shm.endswith("Gi") and int(shm[:-2]) >= 200, "object store (200 GB cap) fits in /dev/shm"
    assert len(images) == 1, images
    assert gpu_groups >= 3  # raycluster, pretrain, finetune


def test_rayjobs_run_the_project_jobs():
    docs = _kuberay_docs()
    cluster = docs["raycluster.yaml"]
    expect = {
        "rayjob-build-protanno.yaml": ("jobs/build_protanno.py", "jobs/configs/build_uniprot.yaml"),
        "rayjob-pretrain.yaml": ("jobs/pretrain.py", "jobs/configs/paper.yaml"),
        "rayjob-evaluate.yaml": ("jobs/evaluate.py", "jobs/configs/evaluate_cluster.yaml"),
        "rayjob-finetune-lora.yaml": ("jobs/finetune_lora.py", "jobs/configs/deeploc_lora.yaml"),
    }
    for name, (script, config) in expect.items():
        spec = docs[name]["spec"]
        argv = spec["entrypoint"].split()
        assert argv[:2] == ["python", f"/opt/protclip/{script}"], spec["entrypoint"]
        if config:
            assert argv[argv.index("--config") + 1] == f"/opt/protclip/{config}"
        # dotted overrides only (--section.field value)
        flags = [a for a in argv[2:] if a.startswith("--")]
        assert all(f == "--config" or re.fullmatch(r"--[a-z_]+(\.[a-z_]+)+", f) for f in flags), flags
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    assert docs["rayjob-evaluate.yaml"]["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    for name in ("rayjob-pretrain.yaml", "rayjob-finetune-lora.yaml", "rayjob-build-protanno.yaml"):
        assert docs[name]["spec"]["shutdownAfterJobFinishes"] is True
    pre = docs["rayjob-pretrain.yaml"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(GPU_RESOURCE, 0))
               for g in pre)
    assert gpus == 32  # global batch 2048 = 32 GPUs x 64 (docs/cluster.md)
    build = docs["rayjob-build-protanno.yaml"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert all(GPU_RESOURCE not in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in build)


def _ray_cluster() -> dict:
    doc = copy.deepcopy(yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text()))
    return doc


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    (lambda d: d["metadata"].update(name="ProtCLIP_cluster"), "DNS-1123"),
    (lambda d: d["spec"]["headGroupSpec"].pop("rayStartParams"), "rayStartParams is required"),
    (lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "must be a string"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("image"), "image is required"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].pop("resources"),
     "resources.limits is required"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplicas=5), "minReplicas <= replicas <= maxReplicas"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName is required"),
    (lambda d: d["spec"]["workerGroupSpecs"][1].update(groupName="gpu-h100x8"), "used twice"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .pop(GPU_RESOURCE), "requested but not limited"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update(memory="lots"), "not a Kubernetes quantity"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["volumeMounts"]
     .append({"name": "scratch", "mountPath": "/scratch"}), "undeclared volume 'scratch'"),
    (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
     .append({"name": "unused", "emptyDir": {}}), "never mounted"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
     .append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}), "use valueFrom.secretKeyRef"),
    (lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
     .append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}), "needs name and key"),
    (lambda d: d.update(kind="RayService"), "kind must be"),
])
def test_kuberay_validator_catches_mistakes(mutate, fragment):
    doc = _ray_cluster()
    mutate(doc)
    errors = validate_kuberay(doc)
    assert any(fragment in e for e in errors), errors


@pytest.mark.parametrize("mutate, fragment", [
    (lambda s: s.pop("entrypoint"), "entrypoint is required"),
    (lambda s: s.update(clusterSelector={"ray.io/cluster": "protclip"}), "exactly one of"),
    (lambda s: s.pop("rayClusterSpec"), "exactly one of"),
    (lambda s: s.update(runtimeEnvYAML="env_vars: [unclosed"), "runtimeEnvYAML"),
    (lambda s: s.update(submissionMode="Batch"), "submissionMode"),
    (lambda s: s.update(shutdownAfterJobFinishes=False), "ttlSecondsAfterFinished"),
    (lambda s: s["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}), "must be a string"),
])
def test_rayjob_validator_catches_mistakes(mutate, fragment):
    doc = copy.deepcopy(_kuberay_docs()["rayjob-pretrain.yaml"])
    mutate(doc["spec"])
    errors = validate_kuberay(doc)
    assert any(fragment in e for e in errors), errors


# ------------------------------------------------------------------------------------------------ image


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            k, v = line.split("==", 1)
            pins[k.strip().lower()] = v.strip()
    return pins


def test_image_pins_match_the_tested_stack():
    import ray

    gpu = _pins(CLUSTER / "constraints-gpu.txt")
    ci = _pins(REPO_ROOT / ".ci" / "constraints.txt")
    assert gpu["torch"] == ci["torch"] == "2.13.0"
    # xformers >= 0.0.35 needs torch >= 2.10 only; older releases pin one exact torch
    assert gpu["xformers"] == "0.0.35"
    assert gpu["ray"] == ray.__version__
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(r'gpu\s*=\s*\["xformers>=0\.0\.35", "nvidia-ml-py>=12"\]', pyproject)
    assert "nvidia-ml-py" in gpu  # the image pins what the extra asks for (MLflow's GPU system metrics)
    for doc in _kuberay_docs().values():
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec") or {}
        assert spec.get("rayVersion", ray.__version__) == ray.__version__


def test_dockerfile_builds_the_gpu_image():
    text = (CLUSTER / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    base = re.search(r"^ARG CUDA_BASE=(\S+)", text, re.M).group(1)
    assert froms == ["${CUDA_BASE}"] and base.startswith("nvidia/cuda:12.")
    runs = " ".join(re.findall(r"^RUN (.+?)(?<!\\)$", text, re.M | re.S))
    installs = re.findall(r"pip install (?!-U pip)([^&]+)", runs)
    assert installs and all("-c /opt/constraints-gpu.txt" in i for i in installs), installs
    assert '".[gpu]"' in text and "ray[default" in text and "xformers" in text
    assert "torch.version.cuda" in text  # the build fails on a CPU-only torch
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".git", ".venv", "data", "checkpoints"):
        assert pattern in ignore


# ------------------------------------------------------------------------------------------------ MLflow


def test_mlflow_k8s_deployment():
    docs = mlflow_k8s_docs()
    dep, svc = docs[("Deployment", "mlflow")], docs[("Service", "mlflow")]
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    args = c["args"]
    assert args[0] == "server" and "--host=0.0.0.0" in args
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert not any("postgresql" in a for a in args), "the DB URI (with password) must not be on the command line"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    # the Service selects the Deployment's pods and targets its named port
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port = svc["spec"]["ports"][0]
    assert port["targetPort"] in {p["name"] for p in c["ports"]}
    # jobs point at this Service, and its DNS name passes MLflow's Host-header check
    uri = urlparse(jobs_tracking_uri())
    assert uri.hostname == f"{svc['metadata']['name']}.protclip.svc.cluster.local" and uri.port == port["port"]
    allowed = mlflow_k8s_allowed_hosts().split(",")
    assert any(fnmatch.fnmatch(uri.netloc, a) for a in allowed)
    assert any(fnmatch.fnmatch("127.0.0.1:5000", a) for a in allowed)  # kubectl port-forward
    pg = docs[("StatefulSet", "mlflow-postgres")]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in pg["env"]} >= {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}


def test_mlflow_compose_recipe():
    doc = yaml.safe_load((CLUSTER / "mlflow" / "docker-compose.yaml").read_text())
    svcs = doc["services"]
    assert set(svcs) == {"postgres", "mlflow"}
    ml = svcs["mlflow"]
    assert ml["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ml["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert any(a.startswith("--artifacts-destination=") for a in ml["command"])
    assert ml["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:5000:5000"]  # loopback unless asked otherwise
    assert (CLUSTER / "mlflow" / "serve_local.sh").stat().st_mode & 0o111


# ------------------------------------------------------------------------------------------------ docs


def test_cluster_doc_matches_the_files():
    doc = (REPO_ROOT / "docs" / "cluster.md").read_text()
    for rel in re.findall(r"`(cluster/[\w./-]+)`", doc):
        assert (REPO_ROOT / rel.rstrip("/")).exists(), rel
    for job in ("jobs/build_protanno.py", "jobs/pretrain.py", "jobs/evaluate.py", "jobs/finetune_lora.py"):
        assert job in doc
    assert "ray job submit --runtime-env cluster/runtime_env.yaml" in doc
    # the estimate's arithmetic: 989 TFLOP/s x 40 % / 2.1 TFLOP per pair, and 32 GPUs x 64 = 2048
    per_gpu = 989 * 0.4 / 2.1
    assert round(per_gpu) == 188 and "188" in doc and "190 pairs/s per H100" in doc
    assert "2048 = 32 GPUs × 64" in doc and f"{round(32 * 190):,}" in doc
    assert "estimate" in doc.lower()


def _doc_command(section: str) -> list[str]:
    """The argv after ``ray job submit ... --`` of the first bash block of a docs/cluster.md section."""
    text = (REPO_ROOT / "docs" / "cluster.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["ray", "job"], argv
    return argv[argv.index("--") + 1:]


def test_the_cluster_evaluate_command_loads_as_ray_job_submit_runs_it_on_several_nodes(tmp_path, monkeypatch,
                                                                                      shared_data):
    """docs/cluster.md section 7, the way ``ray job submit`` runs it on a multi-node cluster (in Ray's copy of
    the repository, no shared data folder beside it, MLflow address from the nodes): the config loads, nothing
    relative is left for the node-count check to refuse, and every suite reads an s3:// URI or the shared
    volume every pod mounts. The local evaluate.yaml fails the same way the command did before."""
    from protclip import local_paths
    from protclip.config import ConfigError, cli_config
    from protclip.eval.config import PATH_KEYS, EvaluateConfig
    from protclip.runtime import refuse_relative_paths_on_cluster

    argv = _doc_command("7. Evaluate")
    assert argv[:2] == ["python", "jobs/evaluate.py"]
    args = [str(REPO_ROOT / a) if a.startswith("jobs/configs/") else a for a in argv[2:]]
    config = argv[argv.index("--config") + 1]
    entry = _kuberay_docs()["rayjob-evaluate.yaml"]["spec"]["entrypoint"].split()
    assert entry[entry.index("--config") + 1] == f"/opt/protclip/{config}"  # the RayJob runs the same config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", jobs_tracking_uri())
    monkeypatch.setenv("PROTCLIP_SHARED_DATA", str(tmp_path / "not_on_the_nodes"))
    monkeypatch.setattr(local_paths, "_RELATIVE_SEEN", [])
    cfg = cli_config(EvaluateConfig, args)
    refuse_relative_paths_on_cluster(4)
    assert cfg.source.checkpoint.startswith("s3://") and cfg.num_gpus >= 1
    paths = [s.config[k] for s in cfg.suites for k in PATH_KEYS if s.config.get(k)]
    assert len(paths) == len(cfg.suites) >= 3
    assert all(p.startswith(("s3://", "/mnt/shared/")) for p in paths), paths

    local = ["--config", str(REPO_ROOT / "jobs" / "configs" / "evaluate.yaml"), *args[2:]]
    with pytest.raises(ConfigError, match=r"shared data folder not found"):
        cli_config(EvaluateConfig, local)
    monkeypatch.setenv("PROTCLIP_SHARED_DATA", str(shared_data))  # shared: resolved, the relative path remains
    monkeypatch.setattr(local_paths, "_RELATIVE_SEEN", [])
    cli_config(EvaluateConfig, local)
    with pytest.raises(ConfigError, match=r"outputs/protanno_samples' is a relative local path"):
        refuse_relative_paths_on_cluster(4)


def test_validate_cli(tmp_path, capsys):
    from protclip.cluster_tools import main

    assert main(["validate", *map(str, LAUNCHERS.values()), *map(str, KUBERAY)]) == 0
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-pretrain.yaml").read_text())
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 8}
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(bad)]) == 1
    assert "num-gpus" in capsys.readouterr().err
