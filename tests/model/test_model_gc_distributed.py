"""GC across ranks: 2 gloo ranks x 4 samples == 1 process x 8 samples (loss and gradients), and the same with
ranks of unequal sizes (3 + 5 pairs, as packed token-budget micro-batches give): the padded gather and the
per-rank share weight keep the ranks' average equal to the one-process loss.

The "towers" here are linear maps so the spawned ranks import only torch and the loss module (seconds, not
the transformers stack); the model-level wiring of the same loss is covered in test_model_gradients.py.
"""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from protclip.model.losses.contrastive import global_contrastive_loss
from tests.helpers.tolerance import ULPS_REDUCTION, assert_close_rounding

WORLD, LOCAL, DIM_IN, DIM = 2, 4, 12, 6


class LinearTowers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.protein = torch.nn.Linear(DIM_IN, DIM)
        self.text = torch.nn.Linear(DIM_IN, DIM)
        self.logit_scale = torch.nn.Parameter(torch.tensor([math.log(1 / 0.07)]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, t = F.normalize(self.protein(x), dim=-1), F.normalize(self.text(y), dim=-1)
        return global_contrastive_loss(p, t, self.logit_scale.exp())["loss_gc"]  # default gather: all ranks


def global_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL, DIM_IN, generator=g), torch.randn(WORLD * LOCAL, DIM_IN, generator=g)


def _worker(rank: int, store_path: str, out_dir: str, split: tuple[int, int] = (LOCAL, LOCAL)) -> None:
    # FileStore rendezvous (torch's TCPStore would listen on all interfaces); gloo pairs on loopback only
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)  # 2 ranks on a shared CPU: intra-op threads would only oversubscribe it
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        model = LinearTowers()
        x, y = global_inputs()
        rows = slice(sum(split[:rank]), sum(split[: rank + 1]))
        loss = model(x[rows], y[rows])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for g in grads.values():  # what DDP/FSDP do: average gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            torch.save({"loss": total / WORLD, "grads": grads}, os.path.join(out_dir, "dist.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("split", [(LOCAL, LOCAL), (3, 5)], ids=["equal", "unequal"])
def test_gc_two_ranks_equals_one_process(tmp_path, split):
    mp.spawn(_worker, args=(str(tmp_path / "pg_store"), str(tmp_path), split), nprocs=WORLD, join=True)
    got = torch.load(tmp_path / "dist.pt", weights_only=True)

    model = LinearTowers()
    loss = model(*global_inputs())
    loss.backward()

    # Same maths, other reduction order (a rank's half-batch sums + a gloo all-reduce vs one 8-row sum): the
    # results agree to a few fp32 roundings of the largest term, not of each entry. The loss is a mean of
    # logsumexp(logits) - logit_ii with |logits| <= exp(logit_scale): that is the magnitude it rounds at.
    logit_bound = max(float(loss.detach().abs()), float(model.logit_scale.detach().exp()))
    assert_close_rounding(got["loss"], loss.detach(), ULPS_REDUCTION, scale=logit_bound, msg="loss")
    for name, p in model.named_parameters():
        assert p.grad.abs().sum() > 0, name
        assert_close_rounding(got["grads"][name], p.grad, ULPS_REDUCTION, msg=name)
