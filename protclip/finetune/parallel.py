"""Wrapping a peft LoRA model for data-parallel training: FSDP2 with LoRA units of their own, or DDP.

FSDP2 order (torchtune's LoRA recipe): every ``lora_A``/``lora_B`` linear and the trainable head copy
(``modules_to_save``) become FSDP units first, then each ``EsmLayer`` (which then only holds the frozen base
weights) and the root, through the pre-training :func:`protclip.train.parallelize.parallelize`. One
mixed-precision policy for all units: with ``bf16`` the frozen base is *stored* in bf16, LoRA/head master
weights stay fp32, every unit computes in bf16 and reduces gradients in fp32. Each unit then holds a single
original dtype and a single ``requires_grad``, which is what FSDP1's ``FlatParameter`` (pytorch #100945) and
early FSDP2 releases (LlamaFactory #10157) required; in torch 2.13 a mixed unit also works, but separate units
keep the frozen all-gathers apart from the trainable reduce-scatters.

The loop calls the wrapped model exactly like the plain one; optimizer and DCP code see the original parameter
names (FSDP2 does not rename; DDP's ``module.`` prefix is stripped by ``get_state_dict``).

FSDP2 hooks its pre-backward all-gather onto each unit's outputs, and an in-place op on an output that is a view
would drop that hook (FSDP2 warns on every such forward). ``nn.Linear`` returns a 3-D input's result as a view of
its 2-D matmul, so the per-residue head copy (a Linear on ``[B, L, H]``) would return one; the LoRA/head units
therefore return owned copies of view outputs (:func:`own_view_outputs`; values unchanged).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

_log = logging.getLogger(__name__)


def lora_units(model: nn.Module) -> list[nn.Module]:
    """The leaf modules holding trainable adapter/head weights: each LoRA A/B linear and each trainable head
    copy. They are the modules peft *calls* (``lora_A["default"](x)``), so FSDP's forward hooks fire."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    units: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, LoraLayer):
            for holder in (m.lora_A, m.lora_B):
                units.extend(holder[name] for name in holder)
        elif isinstance(m, ModulesToSaveWrapper):
            units.extend(m.modules_to_save[name] for name in m.modules_to_save)
    return units


def _owned(x):
    if isinstance(x, torch.Tensor):
        return x.clone() if x.requires_grad and x._base is not None else x
    if type(x) in (tuple, list):
        return type(x)(_owned(v) for v in x)
    return x


def own_view_outputs(module: nn.Module):
    """Make ``module`` return a copy in place of every grad-requiring output tensor that is a view.

    Registered in front of all forward hooks, so FSDP2's post-forward hook (which attaches the pre-backward
    all-gather) sees the copies. Under ``no_grad`` nothing requires grad and nothing is copied.
    """
    return module.register_forward_hook(lambda _m, _args, out: _owned(out), prepend=True)


def shard_lora_fsdp2(model: nn.Module, *, device_type: str = "cpu", param_dtype: torch.dtype | None = None,
                     activation_checkpointing: bool = False) -> nn.Module:
    """FSDP2-shard a peft model in place: LoRA/head units, then layers and root (see module docstring)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from protclip.train.parallelize import parallelize

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    units = lora_units(model)
    for unit in units:
        own_view_outputs(unit)
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    parallelize(model, device_type=device_type, mesh=mesh, param_dtype=param_dtype,
                activation_checkpointing=activation_checkpointing, forward_methods=())
    _log.info("FSDP2 LoRA: %d adapter/head units sharded separately", len(units))
    return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the default process group; only trainable parameters are bucketed and all-reduced."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The peft model inside a DDP wrapper (FSDP2 wraps in place, so it is returned as is)."""
    return model.module if hasattr(model, "module") and not hasattr(model, "peft_config") else model
