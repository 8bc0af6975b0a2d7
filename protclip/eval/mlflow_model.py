"""The exported model as an MLflow 3 logged model: a pyfunc that embeds proteins or texts into the joint space.

Why: an MLflow user looks for the run's model on the run page ("Logged models") and expects
``mlflow.pyfunc.load_model("models:/<model_id>").predict(...)`` to work in plain Python. The model folder holds
the export (``protein/``, ``text/``, ``heads.safetensors``) and the run's ``config.yaml`` (model section, sequence
lengths), so it loads without the run folder; loading needs the ``protclip`` package installed (it is the code).

Input: a pandas DataFrame with exactly one of the columns ``protein`` (amino-acid sequences) or ``text``
(descriptions). Output: float32 array ``(n, projection_dim)`` of L2-normalised joint-space embeddings, the same
vectors :class:`~protclip.eval.protclip_embedder.ProtCLIPEmbedder` gives the retrieval and zero-shot suites.
"""

from __future__ import annotations

import logging
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc

_log = logging.getLogger(__name__)

__all__ = ["ProtCLIPPyfunc", "log_export_model", "MODEL_NAME", "BATCH_SIZE"]

MODEL_NAME = "protclip"
BATCH_SIZE = 32
_REQUIREMENTS = ("torch", "transformers", "safetensors", "numpy", "pandas", "pyyaml", "mlflow")


class ProtCLIPPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the export folder once (``load_context``); ``predict`` embeds one column of strings."""

    def load_context(self, context: Any) -> None:
        from protclip.eval.protclip_embedder import ProtCLIPEmbedder
        from protclip.pretrained import data_config_from_file, model_config_from_file, model_from_export

        config = context.artifacts["config"]
        model = model_from_export(context.artifacts["export"], model_config_from_file(config))
        self.embedder = ProtCLIPEmbedder(model, device="cpu", data_cfg=data_config_from_file(config))

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        cols = [c for c in ("protein", "text") if c in df.columns and df[c].notna().any()]
        if len(cols) != 1:
            raise ValueError(f"input needs exactly one of the columns 'protein' or 'text', got {list(df.columns)}")
        values = [str(v) for v in df[cols[0]].tolist()]
        if cols[0] == "protein":
            return self.embedder.embed_proteins(values, BATCH_SIZE)
        return self.embedder.embed_texts(values, BATCH_SIZE)


def _requirements() -> list[str]:
    out = []
    for dist in _REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def _signature(dim: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "protein", required=False), ColSpec("string", "text", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]))


def log_export_model(run_id: str, tracking_uri: str, export_dir: str | Path, config_yaml: str, step: int,
                     projection_dim: int) -> str:
    """Log ``export_dir`` plus the run config (``config_yaml``, redacted text) as a logged model of ``run_id``
    (output at ``step``); return its model id. Uses the client API only: no global MLflow state is touched."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    lm = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                    model_type="protclip-joint-embedding", params={"projection_dim": str(projection_dim)})
    try:
        with tempfile.TemporaryDirectory(prefix="protclip-mlflow-model-") as tmp:
            cfg = Path(tmp) / "config.yaml"
            cfg.write_text(config_yaml)
            mlflow.pyfunc.save_model(
                str(Path(tmp) / "model"), python_model=ProtCLIPPyfunc(),
                artifacts={"export": str(export_dir), "config": str(cfg)},
                signature=_signature(projection_dim), pip_requirements=_requirements())
            client.log_model_artifacts(lm.model_id, str(Path(tmp) / "model"))
    except BaseException:
        client.finalize_logged_model(lm.model_id, "FAILED")
        raise
    client.finalize_logged_model(lm.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step)])
    return lm.model_id
