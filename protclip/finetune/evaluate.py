"""Task metrics and prediction decoding for fine-tuned heads (pure numpy; metric definitions from
``protclip.metrics``, the evaluation suites' own, so fine-tune numbers compare with the suites').

Per task type (all "higher is better" except ``mae``/``rmse``/``loss``):
- single_label: ``accuracy``, ``f1_macro``
- multi_label: ``fmax`` (protein-centric), ``aupr`` (micro), ``f1_micro`` at ``threshold``
- regression: ``spearman``, ``mae``, ``rmse`` (in the target's own units)
- per_residue: residue-level ``aupr`` (average precision of the positive class), ``f1`` and ``accuracy`` at
  ``threshold``, over every labelled residue the model saw (cropped-away residues are not scored)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from protclip import metrics as M
from protclip.finetune.model import TaskSpec


def head_outputs(logits: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """Logits -> what predictions are made of: class probabilities, label probabilities, the de-standardised
    value, or per-residue probabilities of the positive class."""
    logits = logits.float()
    if spec.type == "single_label":
        return torch.softmax(logits, dim=-1)
    if spec.type == "multi_label":
        return torch.sigmoid(logits)
    if spec.type == "regression":
        return logits.squeeze(-1) * spec.target_std + spec.target_mean
    return torch.softmax(logits, dim=-1)[..., -1]  # per_residue: P(label "1"), the last class


def batch_outputs(logits: torch.Tensor, attention_mask: torch.Tensor, spec: TaskSpec) -> list[np.ndarray | float]:
    """One output per sequence of a batch (per-residue: an array over the residues fed to the model)."""
    out = head_outputs(logits, spec).detach().cpu().numpy()
    if spec.type != "per_residue":
        return [o for o in out]
    lengths = attention_mask.sum(1).cpu().numpy() - 2  # minus <cls>, <eos>
    return [out[i, 1 : 1 + int(n)] for i, n in enumerate(lengths)]


def compute_metrics(spec: TaskSpec, targets: list[Any], outputs: list[Any],
                    kept: list[np.ndarray] | None = None) -> dict[str, float]:
    """Metrics of one split. ``targets`` are encoded (TaskData form); per-residue ``kept`` gives, per sequence,
    the residue positions that the outputs cover (the crop)."""
    if not targets:
        return {}
    if spec.type == "single_label":
        y = np.asarray(targets)
        pred = np.asarray([np.argmax(o) for o in outputs])
        return {"accuracy": M.accuracy(y, pred), "f1_macro": M.f1(y, pred, average="macro")}
    if spec.type == "multi_label":
        c = len(spec.labels)
        y = np.zeros((len(targets), c))
        for i, t in enumerate(targets):
            y[i, list(t)] = 1
        s = np.stack(outputs)
        out = {"fmax": M.fmax(y, s), "f1_micro": M.f1(y, (s >= spec.threshold).astype(int), average="micro")}
        out["aupr"] = M.aupr_micro(y, s)
        return out
    if spec.type == "regression":
        y, p = np.asarray(targets, dtype=np.float64), np.asarray(outputs, dtype=np.float64)
        return {"spearman": M.spearman(y, p), "mae": M.mae(y, p), "rmse": M.rmse(y, p)}
    ys, ps = [], []
    for i, (t, o) in enumerate(zip(targets, outputs, strict=True)):
        pos = kept[i] if kept is not None else np.arange(len(o))
        ys.append(np.asarray(t)[pos])
        ps.append(np.asarray(o))
    y, p = np.concatenate(ys).astype(np.float64), np.concatenate(ps).astype(np.float64)
    return {
        "aupr": M.aupr_micro(y[:, None], p[:, None]),
        "f1": M.f1(y.astype(int), (p >= spec.threshold).astype(int)),
        "accuracy": M.accuracy(y.astype(int), (p >= spec.threshold).astype(int)),
        "positive_rate": float(y.mean()),
    }


def prediction_rows(spec: TaskSpec, ids: list[str], outputs: list[Any],
                    kept: list[np.ndarray] | None = None) -> list[dict[str, Any]]:
    """Rows for a predictions table (CSV/Parquet): the decision plus the scores behind it."""
    rows = []
    for i, (rid, o) in enumerate(zip(ids, outputs, strict=True)):
        row: dict[str, Any] = {"id": rid}
        if spec.type == "single_label":
            row["prediction"] = spec.labels[int(np.argmax(o))]
            row["score"] = float(np.max(o))
            row.update({f"p_{name}": float(v) for name, v in zip(spec.labels, o, strict=True)})
        elif spec.type == "multi_label":
            row["prediction"] = ";".join(n for n, v in zip(spec.labels, o, strict=True) if v >= spec.threshold)
            row.update({f"p_{name}": float(v) for name, v in zip(spec.labels, o, strict=True)})
        elif spec.type == "regression":
            row["prediction"] = float(o)
        else:
            pos = kept[i] if kept is not None else np.arange(len(o))
            hits = pos[np.asarray(o) >= spec.threshold] + 1  # 1-based, like UniProt features
            row["predicted_positions"] = ",".join(str(int(h)) for h in hits)
            row["n_predicted"] = int(len(hits))
            row["residue_scores"] = ";".join(f"{int(q) + 1}:{float(v):.4f}" for q, v in zip(pos, o, strict=True))
        rows.append(row)
    return rows
