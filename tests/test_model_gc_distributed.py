"""GC across ranks: 2 gloo ranks x 4 samples == 1 process x 8 samples (loss and gradients)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from protclip.model.config import LossConfig
from tests.model_helpers import row_batch, tiny

GC_ONLY = LossConfig(mlm=False, bsr=False, pda=False)
WORLD, LOCAL = 2, 4


def _setup(seed: int = 0):
    model, loss_fn, col = tiny("paper", seed=seed, loss_cfg=GC_ONLY)
    model.train()
    batch = col(row_batch(WORLD * LOCAL), seed=seed)
    return model, loss_fn, batch


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, loss_fn, batch = _setup()
        local = {k: v[rank * LOCAL : (rank + 1) * LOCAL] for k, v in batch.items()}
        terms = loss_fn(model(local))  # default gather: all ranks, with gradient
        terms["loss_gc"].backward()
        grads = _grads(model)
        for g in grads.values():  # what DDP/FSDP do: average gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        loss = terms["loss_gc"].detach().clone()
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / WORLD, "grads": grads}, os.path.join(out_dir, "dist.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gc_two_ranks_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "dist.pt", weights_only=True)

    model, loss_fn, batch = _setup()
    terms = loss_fn(model(batch))
    terms["loss_gc"].backward()
    ref = _grads(model)

    torch.testing.assert_close(got["loss"], terms["loss_gc"].detach(), rtol=1e-5, atol=1e-6)
    assert set(got["grads"]) == set(ref)
    assert {n.split(".")[0] for n in ref} == {"protein_tower", "protein_proj", "text_proj", "logit_scale"}
    for name, g in ref.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
