"""Apply the parallelism to a built model, in one fixed order (as torchtitan's ``parallelize_llama``):

1. activation checkpointing (optional; HF's non-reentrant per-layer checkpointing, so module names and state
   dict keys stay those of plain transformers and exports need no renaming);
2. ``fully_shard`` on every transformer layer of both towers (EsmLayer, BertLayer), so only one layer's full
   weights are materialised at a time;
3. ``fully_shard`` on the root, which takes the remaining parameters (embeddings, projections, heads,
   ``logit_scale``).

On GPU the policy is bf16 parameters for compute with fp32 gradient reduction (open_clip ``amp_bf16``; fp16 is
not offered: it NaNs HF text towers); the sharded master weights and optimizer state stay fp32.
On CPU (gloo) everything stays fp32. Model methods the loss calls outside ``forward`` are registered with
``register_fsdp_forward_method`` so FSDP unshards around them too (open_clip #358).

A unit's grad-requiring outputs must not be views: FSDP2 attaches its pre-backward hook (the all-gather for
backward) to them, an in-place op on a view would drop it, and FSDP2 warns on every such forward. The model's
``forward`` returns owned tensors; LoRA units, whose forward is peft's, get
:func:`protclip.finetune.parallel.own_view_outputs`.

No Ray here: the same function is used by the Ray Train worker, the 2-rank gloo tests and the GPU benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

_log = logging.getLogger(__name__)

__all__ = ["parallelize", "transformer_layer_classes", "apply_activation_checkpointing", "unwrap_class",
           "FORWARD_METHODS"]

#: model methods that run submodules outside ``forward`` (features for the GradCache pass, evaluation)
FORWARD_METHODS: tuple[str, ...] = ("encode_protein", "encode_text", "mlm_logits")


def transformer_layer_classes() -> tuple[type[nn.Module], ...]:
    """The block classes that become FSDP units (ESM-2 and BERT layers)."""
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.esm.modeling_esm import EsmLayer

    return (EsmLayer, BertLayer)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Turn on HF gradient checkpointing in every sub-tower that has trainable parameters; returns how many."""
    from transformers import PreTrainedModel

    n = 0
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
            if any(p.requires_grad for p in m.parameters()):
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                n += 1
    return n


def parallelize(
    model: nn.Module,
    *,
    device_type: str = "cpu",
    mesh: DeviceMesh | None = None,
    param_dtype: torch.dtype | None = None,
    activation_checkpointing: bool = False,
    layer_classes: Sequence[type[nn.Module]] | None = None,
    forward_methods: Iterable[str] = FORWARD_METHODS,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 over all ranks of the default process group and return it.

    Args:
        model: the full model, already on ``device_type`` (or meta, followed by a DCP load).
        device_type: "cpu" (gloo) or "cuda" (NCCL).
        mesh: a 1-D device mesh; default: every rank of the default process group.
        param_dtype: compute dtype of parameters (``torch.bfloat16`` on GPU); None keeps fp32.
        activation_checkpointing: recompute layer activations in backward (memory for ~30% compute).
        layer_classes: FSDP unit classes; default :func:`transformer_layer_classes`.
        forward_methods: non-``forward`` methods to register with FSDP when the model has them.
        reshard_after_forward: free unsharded layer weights after forward (ZeRO-3); False keeps them until
            backward (ZeRO-2, faster, more memory).
    """
    if not torch.distributed.is_initialized():
        raise RuntimeError("parallelize() needs an initialised process group (Ray Train or init_process_group)")
    if mesh is None:
        mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    if activation_checkpointing:
        n = apply_activation_checkpointing(model)
        _log.info("activation checkpointing on in %d tower(s)", n)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    classes = tuple(layer_classes or transformer_layer_classes())
    blocks = [m for m in model.modules() if isinstance(m, classes)]
    if not blocks:
        _log.warning("no transformer layers of %s found; sharding the root only", [c.__name__ for c in classes])
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # the root's params are needed again right at the start of backward: keep them (torchtitan does the same)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    for name in forward_methods:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    _log.info("FSDP2: %d layer units + root on %d ranks (param dtype %s)", len(blocks), mesh.size(), param_dtype)
    return model


def unwrap_class(module: nn.Module) -> type[nn.Module]:
    """The original class of a module that ``fully_shard`` re-classed (``FSDPEsmModel`` -> ``EsmModel``)."""
    for cls in type(module).__mro__:
        if not issubclass(cls, FSDPModule):
            return cls
    return type(module)
