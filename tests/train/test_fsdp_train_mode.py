"""FSDP2 on 2 gloo ranks in *train* mode: the gradients equal the unsharded model's, and no FSDP2-wrapped module
returns a view tensor (FSDP2 warns about those: an in-place op on such an output would drop its pre-backward
hook and skip the all-gather).

Randomness (the PDA Gumbel noise; LoRA and head dropout) is pinned here, not by the trainer: rank r seeds
``100 + r`` right before its forward, and the unsharded reference runs each rank's half of the batch under the
same seed, so both see the same draws. The workers call the model, the loss and ``backward`` directly (one
micro-batch), so only the sharding differs from the reference, not the step's RNG or accumulation bookkeeping.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding
from tests.helpers.train import (
    full_grads,
    run_gloo,
    save_tiny_esm_tower,
    split_batch,
    synthetic_rows,
    tiny_setup,
)

WORLD = 2
VIEW_WARNING = "returned a view tensor"


def _seed(rank: int) -> int:
    return 100 + rank


def _recorded(fn):
    """``(fn(), messages of every warning it raised)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught]


def _assert_grads_match(grads: dict, ref: dict) -> None:
    """Same maths in another reduction order (shards, gloo averaging, per-rank matmul shapes) through a few
    transformer layers: the network rounding budget. Its scale is the max-abs reference gradient of the
    parameter's module, not of the parameter alone: a bias gradient sums the same per-position terms as its
    weight's and carries their rounding even where they cancel (the BSR decoder's key bias shifts each query's
    scores by a constant, which softmax ignores, so its exact gradient is 0)."""
    assert grads.keys() == ref.keys(), set(grads) ^ set(ref)
    module_scale: dict[str, float] = {}
    for name, g in ref.items():
        module = name.rpartition(".")[0]
        module_scale[module] = max(module_scale.get(module, 0.0), float(g.abs().max()))
    for name in ref:
        assert_close_rounding(grads[name], ref[name], ulps=ULPS_NETWORK,
                              scale=module_scale[name.rpartition(".")[0]], msg=name)


# ------------------------------------------------------------------------------------------------ pre-training


def _protclip_worker(rank: int, world: int, batch):
    from protclip.train.parallelize import parallelize

    model, loss_fn, _ = tiny_setup(seed=0)
    model.train()
    parallelize(model, device_type="cpu")
    local = split_batch(batch, world)[rank]

    def step():
        torch.manual_seed(_seed(rank))
        loss_fn(model(local))["loss"].backward()  # GC gathers all ranks' columns; FSDP averages the gradients

    _, messages = _recorded(step)
    return full_grads(model), messages


def _protclip_reference(batch):
    """Unsharded, train mode: each rank's half under that rank's seed; GC over all rows in one graph, per-sample
    terms averaged over the halves (what averaging the per-rank gradients computes)."""
    from protclip.model.losses.contrastive import global_contrastive_loss
    from protclip.model.losses.total import loss_weights

    model, loss_fn, _ = tiny_setup(seed=0)
    model.train()
    w = loss_weights(loss_fn.cfg)
    outs = []
    for rank, half in enumerate(split_batch(batch, WORLD)):
        torch.manual_seed(_seed(rank))
        outs.append(model(half))
    gc = global_contrastive_loss(torch.cat([o["protein_features"] for o in outs]),
                                 torch.cat([o["text_features"] for o in outs]), outs[0]["logit_scale"])
    total = w["loss_gc"] * gc["loss_gc"]
    parts = [loss_fn(o) for o in outs]
    for k in w:
        if k != "loss_gc":
            total = total + w[k] * sum(p[k] for p in parts) / WORLD
    total.backward()
    return full_grads(model)


def test_protclip_train_mode_fsdp2_gradients_match_unsharded_without_view_warnings():
    _, loss_fn, collator = tiny_setup(seed=0)
    assert loss_fn.cfg.pda  # the Gumbel noise this test pins is actually drawn
    batch = collator(synthetic_rows(8, seed=2))
    ref = _protclip_reference(batch)
    for rank, (grads, messages) in enumerate(run_gloo(_protclip_worker, WORLD, batch)):
        assert not [m for m in messages if VIEW_WARNING in m], (rank, messages)
        _assert_grads_match(grads, ref)


# ------------------------------------------------------------------------------------------------ LoRA


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> str:
    return save_tiny_esm_tower(tmp_path_factory.mktemp("tower"))


def _lora_model(tower: str, task_type: str):
    from protclip.finetune.config import LoraAdapterConfig
    from protclip.finetune.model import TaskSpec, attach_lora, build_task_model

    labels = ["0", "1"] if task_type == "per_residue" else ["a", "b", "c"]
    spec = TaskSpec(type=task_type, labels=labels, max_length=40, base=tower)
    torch.manual_seed(0)  # head and LoRA init
    model = attach_lora(build_task_model(tower, spec, head_dropout=0.1), LoraAdapterConfig(r=4, dropout=0.1), spec)
    return model.train()


def _lora_batch(task_type: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 24, (2 * WORLD, 12), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    if task_type == "per_residue":
        labels = torch.randint(0, 2, ids.shape, generator=g)
        labels[:, 0] = labels[:, -1] = -100
    else:
        labels = torch.randint(0, 3, (ids.shape[0],), generator=g)
    return ids, torch.ones_like(ids), labels


def _lora_loss(model, task_type: str, ids, am, labels, seed: int) -> torch.Tensor:
    from protclip.finetune.model import task_loss

    torch.manual_seed(seed)
    return task_loss(model(input_ids=ids, attention_mask=am).logits, labels, task_type)


def _lora_worker(rank: int, world: int, tower: str, task_type: str):
    from protclip.finetune.parallel import shard_lora_fsdp2

    model = shard_lora_fsdp2(_lora_model(tower, task_type))
    batch = _lora_batch(task_type)
    k = batch[0].shape[0] // world
    local = [t[rank * k:(rank + 1) * k] for t in batch]
    _, messages = _recorded(lambda: _lora_loss(model, task_type, *local, seed=_seed(rank)).backward())
    return full_grads(model), messages


@pytest.mark.parametrize("task_type", ["per_residue", "single_label"])
def test_lora_train_mode_fsdp2_gradients_match_unsharded_without_view_warnings(tower, task_type):
    """per_residue: the head is a Linear on ``[B, L, H]``, whose output torch builds as a view; single_label: the
    classification head pools first."""
    model = _lora_model(tower, task_type)
    ids, am, labels = _lora_batch(task_type)
    k = ids.shape[0] // WORLD
    total = sum(_lora_loss(model, task_type, ids[r * k:(r + 1) * k], am[r * k:(r + 1) * k],
                           labels[r * k:(r + 1) * k], seed=_seed(r)) for r in range(WORLD)) / WORLD
    total.backward()
    ref = full_grads(model)
    for rank, (grads, messages) in enumerate(run_gloo(_lora_worker, WORLD, tower, task_type)):
        assert not [m for m in messages if VIEW_WARNING in m], (rank, messages)
        _assert_grads_match(grads, ref)
