"""Zero-shot classification from label prompts encoded by the text tower (ProtST's protocol).

Each class gets one or more names, each name is put into every prompt template, the prompt embeddings are
L2-normalised and averaged per class (CLIP-style prompt ensembling) and renormalised. A protein is assigned the
class of highest cosine similarity (ProtST multiplies by ``logit_scale``, which does not change the argmax).
Metrics: ``acc``, ``f1_macro`` and ``majority_acc`` (most frequent class of the evaluated set: the level a
model that ignores the protein reaches).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from protclip import metrics as M
from protclip.eval.embedder import Embedder
from protclip.eval.suites import figures
from protclip.eval.suites.base import (
    LabeledDataFields,
    SuiteConfig,
    SuiteResult,
    check_labeled_data,
    clean_metrics,
    embed_unique,
    load_labeled,
    require,
)

# DeepLoc's 10 location classes -> names as UniProt's SUBCELLULAR LOCATION text writes them (the text tower
# saw that vocabulary in pre-training). Several names per class are averaged.
DEEPLOC_CLASS_NAMES: dict[str, list[str]] = {
    "Nucleus": ["Nucleus"],
    "Cytoplasm": ["Cytoplasm", "Cytoplasm, cytosol"],
    "Extracellular": ["Secreted", "Secreted, extracellular space"],
    "Mitochondrion": ["Mitochondrion", "Mitochondrion matrix"],
    "Cell.membrane": ["Cell membrane"],
    "Endoplasmic.reticulum": ["Endoplasmic reticulum", "Endoplasmic reticulum membrane"],
    "Plastid": ["Plastid, chloroplast", "Plastid"],
    "Golgi.apparatus": ["Golgi apparatus", "Golgi apparatus membrane"],
    "Lysosome/Vacuole": ["Lysosome", "Vacuole"],
    "Peroxisome": ["Peroxisome"],
}
# the first mirrors ProtAnno's own text format ("... SUBCELLULAR LOCATION: Nucleus. ...")
DEFAULT_LOCATION_TEMPLATES: list[str] = [
    "SUBCELLULAR LOCATION: {name}.",
    "{name}.",
    "The protein localizes to the {name}.",
]


@dataclass(kw_only=True)
class ZeroShotConfig(SuiteConfig, LabeledDataFields):
    templates: list[str] = field(
        default_factory=lambda: list(DEFAULT_LOCATION_TEMPLATES)
    )  # each has "{name}"
    class_names: dict[str, list[str]] | None = (
        None  # label -> names; None: DeepLoc names, else the label itself
    )
    classes: list[str] | None = (
        None  # candidate classes; None = the labels in the data. Rows outside are dropped
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_labeled_data(self)
        require(self.task_type == "single_label", "zero-shot classification is single-label")
        require(bool(self.templates), "templates must not be empty")
        bad = [t for t in self.templates if "{name}" not in t]
        require(not bad, f"templates without '{{name}}': {bad}")
        require(
            self.classes is None or len(set(self.classes)) >= 2, "classes needs at least 2 distinct labels"
        )


def class_prompts(
    classes: list[str], templates: list[str], names: dict[str, list[str]] | None
) -> dict[str, list[str]]:
    """Prompts per class: every name of the class in every template."""
    out = {}
    for c in classes:
        if names is not None and c in names:
            cnames = names[c] if isinstance(names[c], list) else [names[c]]  # type: ignore[list-item]
        elif names is None and c in DEEPLOC_CLASS_NAMES:
            cnames = DEEPLOC_CLASS_NAMES[c]
        else:
            cnames = [c]
        out[c] = [t.format(name=n) for n in cnames for t in templates]
    return out


def class_embeddings(embedder: Embedder, prompts: dict[str, list[str]], batch_size: int) -> np.ndarray:
    """One unit vector per class: the renormalised mean of its unit-norm prompt embeddings."""
    flat = [p for ps in prompts.values() for p in ps]
    emb = np.asarray(embedder.embed_texts(flat, batch_size), dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    out, start = [], 0
    for ps in prompts.values():
        mean = emb[start : start + len(ps)].mean(0)
        out.append(mean / max(np.linalg.norm(mean), 1e-12))
        start += len(ps)
    return np.stack(out)


def run(cfg: ZeroShotConfig, embedder: Embedder) -> SuiteResult:
    data = load_labeled(cfg)
    classes = list(dict.fromkeys(cfg.classes)) if cfg.classes else sorted(set(data.labels))
    keep = [i for i, y in enumerate(data.labels) if y in set(classes)]
    n_outside = len(data) - len(keep)
    dropped = dict(data.dropped)
    data = data.subset(keep)
    if len(data) == 0:
        raise ValueError(f"{cfg.path}: no rows with a label among {classes}")
    prompts = class_prompts(classes, cfg.templates, cfg.class_names)
    cls_emb = class_embeddings(embedder, prompts, cfg.batch_size)
    prot = embed_unique(embedder, data.sequences, cfg.batch_size)
    pred_idx = M.similarity_matrix(prot, cls_emb).argmax(1)
    y_pred = [classes[i] for i in pred_idx]
    majority = Counter(data.labels).most_common(1)[0][1] / len(data)
    metrics = {
        "acc": M.accuracy(data.labels, y_pred),
        "f1_macro": M.f1(data.labels, y_pred, average="macro"),
        "majority_acc": majority,
    }
    figs = {}
    if cfg.make_figures:
        figs["confusion"] = figures.confusion(data.labels, y_pred, classes, "zero-shot: confusion")
    info = {"n_classes": len(classes), "n_label_outside_classes": n_outside, "dropped": dropped,
            "prompts": prompts}
    return SuiteResult(clean_metrics(metrics), figs, len(data), info)
