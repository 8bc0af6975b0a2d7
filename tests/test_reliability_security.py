"""Reliability: security (docs/reliability.md §4).

* Static guard over the product code (protclip/, jobs/, benchmarks/, scripts/, cluster/): ``torch.load`` only with
  ``weights_only=True``; DCP loads only through an explicit (allow-listed) storage reader; YAML only through
  ``safe_load``; no pickle/joblib/dill loads, ``read_pickle`` or ``allow_pickle``; no ``trust_remote_code`` or
  ``use_safetensors=False``; no server default bound to 0.0.0.0.
* Exported weights are safetensors only, and load back with plain transformers.
* Credentials: config dataclasses never print them (repr of every config section holding storage credentials), and
  a planted secret passed through every MLflow entry point reaches no param, tag, metric key or artifact.
* The local Ray instance the jobs start listens on loopback only (every listening socket of this session's Ray
  processes), and the runtime module sets the loopback switch in a clean interpreter.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys

import pytest

from protclip.paths import REPO_ROOT

PLANTED = "planted-sec-secret-4410"
ENV_SECRET = "planted-env-secret-0918"
SCANNED_DIRS = ("protclip", "jobs", "benchmarks", "scripts", "cluster")
PICKLE_MODULES = ("pickle", "cloudpickle", "dill", "joblib", "_pickle")
YAML_UNSAFE = ("load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all")
DCP_LOADS = ("dcp.load", "torch.distributed.checkpoint.load", "dist_cp.load", "dcp.state_dict_loader.load")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _const(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else ...


def unsafe_calls(source: str, where: str) -> list[str]:
    """Every call in ``source`` that could run code from a file or expose a server (see the module docstring)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name, kw = _dotted(node.func), {k.arg: k.value for k in node.keywords if k.arg}
        head, last = name.split(".")[0], name.rsplit(".", 1)[-1]
        at = f"{where}:{node.lineno} {name}"
        if name == "torch.load" and _const(kw.get("weights_only")) is not True:
            found.append(f"{at} without weights_only=True")
        if name in DCP_LOADS and "storage_reader" not in kw:
            found.append(f"{at} without storage_reader=safe_reader(...) (DCP unpickles .metadata)")
        if head == "yaml" and last in YAML_UNSAFE:
            found.append(f"{at}: use yaml.safe_load")
        if head in PICKLE_MODULES and last in ("load", "loads"):
            found.append(f"{at}: unpickling runs code")
        if last == "read_pickle" or (head in ("np", "numpy") and _const(kw.get("allow_pickle")) is True):
            found.append(f"{at}: unpickling runs code")
        if _const(kw.get("trust_remote_code")) is True or _const(kw.get("use_safetensors")) is False:
            found.append(f"{at}: remote code / pickle weights")
        for k, v in kw.items():
            if "host" in k and _const(v) in ("0.0.0.0", "::"):
                found.append(f"{at}: {k}={_const(v)!r} exposes a server")
    for node in ast.walk(ast.parse(source)):  # defaults: def serve(host="0.0.0.0")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args[-len(node.args.defaults):] if node.args.defaults else []
            for a, d in list(zip(args, node.args.defaults, strict=True)) + list(
                    zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True)):
                if "host" in a.arg and _const(d) in ("0.0.0.0", "::"):
                    found.append(f"{where}:{node.lineno} {node.name}({a.arg}={_const(d)!r}) exposes a server")
    return found


def test_guard_catches_what_it_should():
    bad = '''
import torch, yaml, pickle, numpy as np
import torch.distributed.checkpoint as dcp
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
yaml.load(open("c.yaml"), Loader=yaml.Loader)
pickle.loads(b"")
np.load("a.npy", allow_pickle=True)
dcp.load(sd, checkpoint_id="d")
M.from_pretrained("x", trust_remote_code=True)
app.run(host="0.0.0.0")
def serve(root, host="0.0.0.0"): ...
'''
    assert len(unsafe_calls(bad, "bad.py")) == 9
    good = 'torch.load("x", weights_only=True)\nyaml.safe_load("a: 1")\ndcp.load(sd, storage_reader=r)\n'
    assert unsafe_calls(good, "good.py") == []


def test_product_code_loads_nothing_unsafely():
    files = [p for d in SCANNED_DIRS for p in (REPO_ROOT / d).rglob("*.py") if ".venv" not in p.parts]
    assert len(files) > 50
    problems = [x for f in files for x in unsafe_calls(f.read_text(), str(f.relative_to(REPO_ROOT)))]
    assert not problems, "\n".join(problems)


def test_exported_weights_are_safetensors_only(tmp_path):
    import torch
    from transformers import BertModel, EsmModel

    from protclip.model.config import LossConfig, tiny_model_config
    from protclip.model.protclip import build_model, export_towers

    torch.manual_seed(0)
    model = build_model(tiny_model_config(), LossConfig())
    export_towers(model, str(tmp_path))
    weights = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth",
                                                                             ".pkl", ".ckpt", ".h5", ".msgpack")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
    assert EsmModel.from_pretrained(tmp_path / "protein", use_safetensors=True).config.hidden_size == 64
    assert BertModel.from_pretrained(tmp_path / "text", use_safetensors=True).config.hidden_size == 64


# ------------------------------------------------------------------------------------------------ credentials


def _config_sections_with_credentials():
    """Every config dataclass of the product that holds (or nests) storage credentials."""
    from protclip.data.build import BuildConfig  # noqa: F401  (imported so its section classes exist)
    from protclip.eval.config import EvaluateConfig
    from protclip.finetune.config import FinetuneConfig
    from protclip.recipes.build_protanno import BuildJobConfig
    from protclip.recipes.pretrain import PretrainConfig
    from protclip.storage import StorageConfig
    from protclip.train.config import RunStorageConfig

    return [StorageConfig, RunStorageConfig, PretrainConfig, BuildJobConfig, FinetuneConfig, EvaluateConfig]


def _fill_secrets(obj):
    """Set every credential field reachable in a config tree to the planted secret."""
    from protclip.storage import SECRET_FIELDS

    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name in SECRET_FIELDS:
            setattr(obj, f.name, PLANTED)
        elif dataclasses.is_dataclass(v):
            _fill_secrets(v)
    return obj


def _default(cls):
    from protclip.config import load_config

    required = {"PretrainConfig": {"data.uri": "x"}}.get(cls.__name__, {})
    try:
        return load_config(cls, None, required)
    except Exception:  # noqa: BLE001 - sections with required fields: build from the example config instead
        example = {"FinetuneConfig": ("jobs/configs/deeploc_lora.yaml", {}),
                   "EvaluateConfig": ("jobs/configs/evaluate.yaml", {"source.export": "x"})}[cls.__name__]
        return load_config(cls, REPO_ROOT / example[0], example[1])


@pytest.mark.parametrize("cls", _config_sections_with_credentials(), ids=lambda c: c.__name__)
def test_config_repr_never_shows_credentials(cls):
    cfg = _fill_secrets(_default(cls))
    assert PLANTED not in repr(cfg) and PLANTED not in str(cfg) and PLANTED not in f"{cfg!r:>10}"


def test_planted_secret_reaches_no_mlflow_entry(tmp_path, monkeypatch):
    """Config secret, env secret and a URL password, pushed through every RunLogger entry point: the MLflow store
    (raw sqlite bytes) and artifact folder never contain them."""
    from protclip.config import load_config
    from protclip.recipes.pretrain import PretrainConfig
    from protclip.tracking import RunLogger, TrackingConfig, open_run, secrets_of

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(PretrainConfig, None, {"data.uri": f"s3://bucket/x?note={ENV_SECRET}",
                                             "storage.secret_access_key": PLANTED,
                                             "storage.access_key_id": "AKIAPLANTEDKEY99",
                                             "storage.storage_path": "s3://user:urlpass4410@host/runs"})
    run_id = open_run(TrackingConfig(experiment="sec"), "sec", cfg, tags={"note": f"key {PLANTED}"},
                      reuse_key=f"s3://user:urlpass4410@host/{PLANTED}")
    log = RunLogger(run_id, None, secrets_of(cfg))
    log.log_params({"extra.secret": PLANTED, "extra.text": f"with {ENV_SECRET} inside"})
    log.set_tags({"t": PLANTED, "u": "s3://user:urlpass4410@host"})
    log.log_text(f"error: {PLANTED} / {ENV_SECRET} / s3://user:urlpass4410@host", "notes/error.txt")
    log.log_dict({"storage": {"secret_access_key": PLANTED}, "msg": ENV_SECRET}, "notes/d.json")
    f = tmp_path / "report.yaml"
    f.write_text(f"secret: {PLANTED}\nurl: s3://user:urlpass4410@host\n")
    log.log_artifact(f, "reports")
    log.log_metrics({"train/loss": 1.0}, step=1)
    log.finish()
    blobs = [(tmp_path / "mlflow.db").read_bytes()]
    blobs += [p.read_bytes() for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    assert len(blobs) >= 5
    for needle in (PLANTED, ENV_SECRET, "AKIAPLANTEDKEY99", "urlpass4410"):
        assert not any(needle.encode() in b for b in blobs), needle


# ------------------------------------------------------------------------------------------------ loopback


def test_runtime_sets_the_loopback_switch_in_a_clean_interpreter():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    code = "import os, protclip.runtime; print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    for job in ("pretrain", "build_protanno", "evaluate", "finetune_lora"):  # before any other protclip/ray import
        tree = ast.parse((REPO_ROOT / "jobs" / f"{job}.py").read_text())
        names = [a.name if isinstance(n, ast.Import) else n.module for n in tree.body
                 if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names]
        ours = [x for x in names if x.split(".")[0] in ("protclip", "ray", "torch")]
        assert ours[0] == "protclip.runtime", (job, ours)


@pytest.mark.ray
def test_local_ray_instance_listens_on_loopback_only(ray_local):
    """Every listening socket of this session's Ray processes (GCS, raylet, agents, workers, dashboard if any)."""
    import psutil

    @ray_local.remote
    def ping() -> int:
        return os.getpid()

    ray_local.get([ping.remote() for _ in range(2)])
    me = psutil.Process()
    listening = []
    for p in [me, *me.children(recursive=True)]:
        try:
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    assert len(listening) >= 4, listening
    exposed = [x for x in listening if x[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, exposed
