"""Where the model to evaluate comes from: a DCP checkpoint, an export folder or an MLflow run, resolved once on
the driver into a picklable :class:`ModelSource` that any process (a Ray task on another node) can load.

Pure (no Ray). Remote URIs (``s3://``) are read with the credentials resolved on the driver (a task's own
environment need not hold them). The pre-training trainer tags its MLflow run with ``protclip.run_uri`` (the
run folder ``<storage_path>/<name>`` holding ``checkpoint_*`` and ``export/``) and logs its config as the
``config/config.yaml`` artifact; an MLflow run id is resolved through those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from protclip import storage as st
from protclip.eval.config import ModelSourceConfig
from protclip.model.config import ModelConfig

_log = logging.getLogger(__name__)

__all__ = [
    "ModelSource",
    "resolve_source",
    "load_model",
    "committed_checkpoints",
    "latest_checkpoint",
    "checkpoint_step",
    "local_copy",
    "EXPORT_TAGS",
]

COMMITTED = "COMMITTED"  # = protclip.train.checkpoint.COMMITTED (not imported: that module pulls in DCP)
STATE_FILE = "trainer_state.json"
RUN_URI_TAG = "protclip.run_uri"
EXPORT_TAGS = ("protclip.export_dir", "protclip.export_path", "export_dir")  # as the LoRA loader reads them
CONFIG_ARTIFACT = "config/config.yaml"


@dataclass
class ModelSource:
    """A resolved model to evaluate (picklable; shipped to eval tasks)."""

    kind: Literal["checkpoint", "export", "mlflow_export"]
    uri: str  # local path or remote URI; for mlflow_export the run id whose ``export/`` artifacts hold the model
    model_cfg: ModelConfig | None = None  # architecture; required for checkpoints, optional for exports
    step: int = 0  # the training step the weights measured (the MLflow step of every eval metric)
    run_id: str | None = None  # the pre-training run this model belongs to, when known
    storage: st.StorageConfig | None = None  # resolved credentials/endpoint for remote URIs
    tracking_uri: str | None = None  # MLflow, for mlflow_export

    def describe(self) -> str:
        return st.redact(f"{self.kind}:{self.uri}")


# ------------------------------------------------------------------------------------------------ checkpoints


def _fs(uri: str, storage: st.StorageConfig | None):
    fs, path = st.filesystem(uri, storage)
    return fs, path.rstrip("/")


def _read_json(fs, path: str) -> dict[str, Any]:
    with fs.open(path, "r") as f:
        return json.load(f)


def checkpoint_step(uri: str, storage: st.StorageConfig | None = None) -> int:
    """The step of a checkpoint folder (its ``COMMITTED`` marker, else ``trainer_state.json``)."""
    fs, path = _fs(uri, storage)
    for name, key in ((COMMITTED, "step"), (STATE_FILE, "step")):
        if fs.exists(f"{path}/{name}"):
            return int(_read_json(fs, f"{path}/{name}")[key])
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
    found = committed_checkpoints(run_uri, storage)
    return found[-1] if found else None


def _is_checkpoint(uri: str, storage: st.StorageConfig | None) -> bool:
    fs, path = _fs(uri, storage)
    return fs.exists(f"{path}/{COMMITTED}") or fs.exists(f"{path}/.metadata")


def _is_export(uri: str, storage: st.StorageConfig | None) -> bool:
    fs, path = _fs(uri, storage)
    return fs.exists(f"{path}/heads.safetensors") and fs.exists(f"{path}/protein/config.json")


# ------------------------------------------------------------------------------------------------ MLflow


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    from protclip.tracking import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def _run_model_config(client, run_id: str) -> ModelConfig | None:
    """The ``model`` section of the config the pre-training run logged, or None when it logged none."""
    from protclip.eval.protclip_embedder import model_config_from_file

    names = [a.path for a in client.list_artifacts(run_id, "config")]
    if CONFIG_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory(prefix="protclip-runcfg-") as d:
        return model_config_from_file(client.download_artifacts(run_id, CONFIG_ARTIFACT, d))


def _find_run_for(run_uri: str, tracking_uri: str | None) -> str | None:
    """The pre-training run tagged with this run folder (as given, or as an absolute local path)."""
    client = _client(tracking_uri)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    variants = {run_uri, os.path.abspath(run_uri)} if "://" not in run_uri else {run_uri}
    for v in variants:
        q = v.replace("\\", "\\\\").replace("'", "\\'")
        runs = client.search_runs(
            exp_ids,
            filter_string=f"tags.`{RUN_URI_TAG}` = '{q}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if runs:
            return runs[0].info.run_id
    return None


# ------------------------------------------------------------------------------------------------ resolve


def resolve_source(
    cfg: ModelSourceConfig,
    storage: st.StorageConfig | None = None,
    tracking_uri: str | None = None,
    config_run_id: str | None = None,
) -> ModelSource:
    """Turn the ``source`` section into a :class:`ModelSource` (driver side; touches storage and MLflow).

    ``config_run_id``: an MLflow run whose logged config may describe a checkpoint's architecture (the run the
    results are logged into, when given).
    """
    from protclip.eval.protclip_embedder import find_run_config, model_config_from_file

    access = (storage or st.StorageConfig()).resolved()
    explicit = model_config_from_file(cfg.model_config) if cfg.model_config else None
    if cfg.mlflow_run_id:
        src = _resolve_run(cfg.mlflow_run_id, access, tracking_uri)
        if explicit is not None:
            src.model_cfg = explicit
    elif cfg.export:
        uri = cfg.export if "://" in cfg.export else os.path.abspath(os.path.expanduser(cfg.export))
        if not _is_export(uri, access):
            raise FileNotFoundError(
                f"source.export {st.redact(uri)}: no heads.safetensors + protein/config.json "
                "(not a ProtCLIP export folder)"
            )
        parent = posixpath.dirname(uri.rstrip("/")) if "://" in uri else str(Path(uri).parent)
        latest = latest_checkpoint(parent, access)
        run_id = config_run_id or _find_run_for(parent, tracking_uri)
        model_cfg = explicit
        local_cfg = find_run_config(uri) if "://" not in uri else None  # a run config beside it wins
        if model_cfg is None and local_cfg is None and run_id:
            model_cfg = _run_model_config(_client(tracking_uri), run_id)
        src = ModelSource("export", uri, model_cfg, latest[0] if latest else 0, run_id, access)
    else:
        assert cfg.checkpoint is not None
        uri = (
            cfg.checkpoint if "://" in cfg.checkpoint else os.path.abspath(os.path.expanduser(cfg.checkpoint))
        )
        if not _is_checkpoint(uri, access):
            latest = latest_checkpoint(uri, access)
            if latest is None:
                raise FileNotFoundError(
                    f"source.checkpoint {st.redact(uri)}: neither a checkpoint folder nor a run "
                    "folder holding complete checkpoint_* folders"
                )
            uri = latest[1]
        run_folder = posixpath.dirname(uri.rstrip("/")) if "://" in uri else str(Path(uri).parent)
        model_cfg = explicit
        run_id = None
        if model_cfg is None and "://" not in uri:
            found = find_run_config(uri)
            model_cfg = model_config_from_file(found) if found else None
        if model_cfg is None:
            run_id = config_run_id or _find_run_for(run_folder, tracking_uri)
            model_cfg = _run_model_config(_client(tracking_uri), run_id) if run_id else None
        if model_cfg is None:
            raise FileNotFoundError(
                f"source.checkpoint {st.redact(uri)}: cannot tell the model architecture; pass source.model_config "
                "(the run's YAML), or run_id of the pre-training run (its logged config is read)"
            )
        src = ModelSource("checkpoint", uri, model_cfg, checkpoint_step(uri, access), run_id, access)
    if cfg.step is not None:
        src.step = cfg.step
    src.tracking_uri = tracking_uri
    return src


def _resolve_run(run_id: str, access: st.StorageConfig, tracking_uri: str | None) -> ModelSource:
    """A pre-training run -> its export folder, else its latest checkpoint, else its logged export artifacts."""
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    meta = {**run.data.params, **run.data.tags}
    model_cfg = _run_model_config(client, run_id)
    run_uri = meta.get(RUN_URI_TAG)
    latest = latest_checkpoint(run_uri, access) if run_uri else None
    step = latest[0] if latest else 0
    exports = [meta[k] for k in EXPORT_TAGS if meta.get(k)] + (
        [st.join(run_uri, "export")] if run_uri else []
    )
    for uri in exports:
        if _is_export(uri, access):
            return ModelSource("export", uri, model_cfg, step, run_id, access, tracking_uri)
    if latest is not None:
        if model_cfg is None:
            raise ValueError(
                f"MLflow run {run_id}: has checkpoints but logged no {CONFIG_ARTIFACT} to describe them"
            )
        return ModelSource("checkpoint", latest[1], model_cfg, latest[0], run_id, access, tracking_uri)
    names = {a.path for a in client.list_artifacts(run_id, "export")}
    if {"export/protein", "export/text", "export/heads.safetensors"} <= names:
        return ModelSource("mlflow_export", run_id, model_cfg, step, run_id, access, tracking_uri)
    raise FileNotFoundError(
        f"MLflow run {run_id}: no export ({', '.join(EXPORT_TAGS)} tag, {RUN_URI_TAG}/export), no complete "
        f"checkpoint under {RUN_URI_TAG}={st.redact(str(run_uri))}, and no export/ artifacts"
    )


# ------------------------------------------------------------------------------------------------ load


@contextlib.contextmanager
def local_copy(source: ModelSource) -> Iterator[Path]:
    """The source as a local folder: downloaded into a temp dir for remote URIs / MLflow artifacts (removed after)."""
    if source.kind != "mlflow_export" and "://" not in source.uri:
        path = Path(source.uri)
        if not path.is_dir():
            raise FileNotFoundError(
                f"{source.describe()} no longer exists (a checkpoint removed by "
                "train.keep_checkpoints before the eval read it?)"
            )
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="protclip-eval-model-")
    try:
        if source.kind == "mlflow_export":
            yield Path(_client(source.tracking_uri).download_artifacts(source.uri, "export", tmp))
        else:
            fs, path = _fs(source.uri, source.storage)
            if not fs.exists(path):
                raise FileNotFoundError(
                    f"{source.describe()} no longer exists (a checkpoint removed by "
                    "train.keep_checkpoints before the eval read it?)"
                )
            dest = os.path.join(tmp, "model")
            fs.get(path + "/", dest + "/", recursive=True)
            yield Path(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(source: ModelSource):
    """``(ProtCLIPModel in eval mode, info)``; info carries the text tokenizer (loaded while a temporary copy of
    an export still exists) and the checkpoint's own step when there is one."""
    from protclip.eval.protclip_embedder import (
        load_model_text_tokenizer,
        model_from_checkpoint,
        model_from_export,
    )

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
        info["text_tokenizer"] = load_model_text_tokenizer(model.cfg)
        return model, info
