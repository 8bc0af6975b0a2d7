"""Fine-tune a small MLP head, on frozen embeddings or together with the top layers of an HF ESM tower.

The head follows the downstream model of the ProtCLIP paper: dropout -> Linear(D, H) -> ReLU -> dropout ->
Linear(H, n). Losses: CE (single-label), BCE-with-logits (multi-label), MSE on standardised targets
(regression). Early stopping on a hash-split validation part of the training data, selecting on accuracy /
Fmax / MAE as ProtCLIP does; the best epoch's weights are restored before the test pass.

``mode="frozen"`` works with any :class:`Embedder`. ``mode="partial"`` needs an embedder exposing the tower
(:class:`HFProteinEmbedder`: ``base``, ``encode``, ``pool``); it trains a *copy* of the tower whose top
``unfreeze_layers`` encoder layers (and final layer norm) get ``lr * backbone_lr_ratio``. It is CPU-slow:
meant for small sets or a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from protclip import metrics as M
from protclip.data.splits import split_by_hash
from protclip.dist import resolve_device
from protclip.eval.embedder import Embedder
from protclip.eval.suites.base import (
    LabeledDataFields,
    SplitFields,
    SuiteConfig,
    SuiteResult,
    check_labeled_data,
    check_split,
    clean_metrics,
    embed_unique,
    require,
    train_test,
)
from protclip.eval.suites.tasks import EncodedLabels, encode_labels, score


@dataclass(kw_only=True)
class FinetuneHeadConfig(SuiteConfig, LabeledDataFields, SplitFields):
    mode: str = "frozen"  # "frozen" (head only) or "partial" (head + top ESM layers; HFProteinEmbedder only)
    hidden_dim: int = 512  # MLP hidden width
    dropout: float = 0.1  # dropout before each Linear
    epochs: int = 50  # upper bound; early stopping usually ends sooner
    lr: float = 1e-3  # Adam learning rate of the head
    backbone_lr_ratio: float = 0.1  # partial mode: tower lr = lr * ratio (ProtCLIP uses 0.1)
    weight_decay: float = 0.0  # Adam weight decay
    train_batch_size: int = 32  # examples per optimisation step
    valid_fraction: float = 0.1  # share of training ids held out for early stopping (0 = no early stopping)
    patience: int = 5  # epochs without improvement before stopping
    unfreeze_layers: int = 1  # partial mode: number of top encoder layers trained
    device: str = "auto"  # head device in frozen mode ("auto": CUDA if present); partial uses the tower's

    def __post_init__(self) -> None:
        super().__post_init__()
        check_labeled_data(self)
        check_split(self)
        require(self.mode in ("frozen", "partial"), f"mode must be 'frozen' or 'partial', got {self.mode!r}")
        require(
            self.hidden_dim >= 1 and self.epochs >= 1 and self.train_batch_size >= 1, "sizes must be >= 1"
        )
        require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        require(
            self.lr > 0 and self.backbone_lr_ratio >= 0 and self.weight_decay >= 0, "bad optimiser settings"
        )
        require(
            0.0 <= self.valid_fraction < 1.0, f"valid_fraction must be in [0, 1), got {self.valid_fraction}"
        )
        require(
            self.patience >= 1 and self.unfreeze_layers >= 0,
            "patience >= 1 and unfreeze_layers >= 0 required",
        )


def make_head(dim: int, hidden: int, n_out: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
    )


class _Frozen:
    """Features are precomputed embeddings, standardised with training statistics."""

    def __init__(self, x: dict[str, np.ndarray], device: torch.device) -> None:
        mean, std = x["train"].mean(0), x["train"].std(0) + 1e-6
        self.x = {k: torch.tensor((v - mean) / std, dtype=torch.float32, device=device) for k, v in x.items()}
        self.dim = x["train"].shape[1]
        self.params: list[nn.Parameter] = []

    def __call__(self, split: str, idx: np.ndarray, training: bool) -> torch.Tensor:
        return self.x[split][torch.as_tensor(idx, device=self.x[split].device)]


class _Partial:
    """Features come from a trainable copy of the embedder's ESM tower (top layers unfrozen)."""

    def __init__(self, embedder: Embedder, seqs: dict[str, list[str]], n_layers: int) -> None:
        if not all(hasattr(embedder, a) for a in ("base", "encode", "pool", "device")):
            raise ValueError("mode='partial' needs an embedder exposing its HF tower (HFProteinEmbedder)")
        self.emb, self.seqs = embedder, seqs
        self.tower = copy.deepcopy(embedder.base)  # type: ignore[attr-defined]
        self.tower.requires_grad_(False)
        layers = list(self.tower.encoder.layer)
        train_mods = layers[len(layers) - n_layers :] if n_layers else []
        final_ln = getattr(self.tower.encoder, "emb_layer_norm_after", None)
        if n_layers and final_ln is not None:
            train_mods.append(final_ln)
        for mod in train_mods:
            mod.requires_grad_(True)
        self.params = [p for p in self.tower.parameters() if p.requires_grad]
        self.dim = self.tower.config.hidden_size
        self.device = embedder.device  # type: ignore[attr-defined]

    def __call__(self, split: str, idx: np.ndarray, training: bool) -> torch.Tensor:
        ids, mask = self.emb.encode([self.seqs[split][i] for i in idx])  # type: ignore[attr-defined]
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.tower.train(training)
        with torch.set_grad_enabled(training):
            hidden = self.tower(input_ids=ids, attention_mask=mask).last_hidden_state
            return self.emb.pool(hidden.float(), ids, mask)  # type: ignore[attr-defined]


def _selection(enc: EncodedLabels, y: np.ndarray, pred: np.ndarray) -> float:
    """Higher is better: accuracy, Fmax, or minus MAE."""
    if enc.task_type == "single_label":
        return M.accuracy(y, pred.argmax(1))
    if enc.task_type == "multi_label":
        return M.fmax(y, pred)
    return -M.mae(y, pred)


def _train(
    cfg: FinetuneHeadConfig,
    enc: EncodedLabels,
    feats: Callable,
    parts: dict[str, np.ndarray],
    device: torch.device,
) -> Callable[[str, np.ndarray], np.ndarray]:
    """Train the head (and any tower params in ``feats.params``); returns ``predict(split, idx)``."""
    torch.manual_seed(cfg.seed)
    y_all = enc.y_train
    y_mean, y_std = (y_all.mean(), y_all.std() + 1e-8) if enc.task_type == "regression" else (0.0, 1.0)
    n_out = 1 if enc.task_type == "regression" else len(enc.classes)
    head = make_head(feats.dim, cfg.hidden_dim, n_out, cfg.dropout).to(device)
    groups = [{"params": head.parameters(), "lr": cfg.lr}]
    if feats.params:
        groups.append({"params": feats.params, "lr": cfg.lr * cfg.backbone_lr_ratio})
    opt = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)

    def target(idx: np.ndarray) -> torch.Tensor:
        y = y_all[idx]
        if enc.task_type == "single_label":
            return torch.as_tensor(y, dtype=torch.long, device=device)
        return torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32, device=device)

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if enc.task_type == "single_label":
            return nn.functional.cross_entropy(out, y)
        if enc.task_type == "multi_label":
            return nn.functional.binary_cross_entropy_with_logits(out, y)
        return nn.functional.mse_loss(out.squeeze(1), y)

    @torch.no_grad()
    def predict(split: str, idx: np.ndarray) -> np.ndarray:
        head.eval()
        outs = []
        for b in range(0, len(idx), cfg.batch_size):
            out = head(feats(split, idx[b : b + cfg.batch_size], False).to(device)).float()
            if enc.task_type == "single_label":
                out = out.softmax(1)
            elif enc.task_type == "multi_label":
                out = out.sigmoid()
            else:
                out = out.squeeze(1) * y_std + y_mean
            outs.append(out.cpu().numpy())
        return np.concatenate(outs)

    rng = np.random.default_rng(cfg.seed)
    best, best_state, bad_epochs = -np.inf, None, 0
    for _ in range(cfg.epochs):
        head.train()
        order = rng.permutation(parts["fit"])
        for b in range(0, len(order), cfg.train_batch_size):
            idx = order[b : b + cfg.train_batch_size]
            loss = loss_fn(head(feats("train", idx, True).to(device)), target(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(parts["valid"]) == 0:
            continue
        val = _selection(enc, y_all[parts["valid"]], predict("train", parts["valid"]))
        if val > best:
            best, bad_epochs = val, 0
            best_state = copy.deepcopy((head.state_dict(), [p.detach().clone() for p in feats.params]))
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state[0])
        with torch.no_grad():
            for p, saved in zip(feats.params, best_state[1], strict=True):
                p.copy_(saved)
    return predict


def run(cfg: FinetuneHeadConfig, embedder: Embedder) -> SuiteResult:
    train, test, info = train_test(cfg)
    enc = encode_labels(cfg.task_type, train.labels, test.labels)
    fit, valid = split_by_hash(train.ids, [1.0 - cfg.valid_fraction, cfg.valid_fraction], cfg.seed + 1)
    if len(fit) == 0:
        raise ValueError(f"{cfg.path}: no training examples left after the validation split")
    if cfg.mode == "frozen":
        device = resolve_device(cfg.device)
        x = embed_unique(embedder, train.sequences + test.sequences, cfg.batch_size)
        feats = _Frozen({"train": x[: len(train)], "test": x[len(train) :]}, device)
    else:
        feats = _Partial(embedder, {"train": train.sequences, "test": test.sequences}, cfg.unfreeze_layers)
        device = feats.device
    predict = _train(cfg, enc, feats, {"fit": fit, "valid": valid}, device)
    pred = predict("test", np.arange(len(test)))
    metrics, figs = score(enc, pred, cfg.make_figures, f"fine-tune head ({cfg.mode})")
    info |= {"n_classes": len(enc.classes), "n_fit": len(fit), "n_valid": len(valid)}
    return SuiteResult(clean_metrics(metrics), figs, len(test), info)
