"""Helpers for the trainer tests: tiny model + collated batches built in code, and a 2-rank gloo launcher.

Lives beside the tests (not in tests/helpers/, which the cluster engineer owns) and imports no Ray.
"""

from __future__ import annotations

import io
import os
import socket
import traceback

import numpy as np
import torch

AA = "ACDEFGHIKLMNPQRSTVWY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_rows(n: int, seed: int = 0, min_len: int = 20, max_len: int = 60) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        seq = "".join(rng.choice(list(AA), size=length))
        rows.append({
            "accession": f"P{i:05d}",
            "sequence": seq,
            "text": f"PROTEIN NAME: Protein {i} kinase. FUNCTION: Binds ligand {i % 7} and cleaves peptide "
                    f"bonds. SUBCELLULAR LOCATION: Cytoplasm. SIMILARITY: Belongs to family {i % 3}.",
        })  # fmt: skip
    return rows


def tiny_setup(seed: int = 0, **model_overrides):
    """(model, loss_fn, collator) with a tiny random-init model; deterministic for a given seed."""
    from protclip.data.collate import ProtCLIPCollator
    from protclip.model.config import LossConfig, collate_config, tiny_model_config
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model

    mcfg = tiny_model_config(**model_overrides)
    lcfg = LossConfig()
    torch.manual_seed(seed)
    model = build_model(mcfg, lcfg)
    return model, ProtCLIPLoss(lcfg, mcfg), ProtCLIPCollator(collate_config(mcfg, lcfg), seed=seed)


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Cut a collated batch into ``parts`` equal micro-batches along dim 0 (same padding, same masks)."""
    b = batch["protein_input_ids"].shape[0]
    assert b % parts == 0
    k = b // parts
    return [{key: v[i * k:(i + 1) * k] for key, v in batch.items()} for i in range(parts)]


def _entry(rank: int, world: int, store_path: str, fn, args, queue) -> None:
    # FileStore rendezvous (torch's TCPStore would listen on all interfaces); gloo pairs on loopback only
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
        buf = io.BytesIO()  # plain bytes: tensors shared through fds die with this process
        torch.save(fn(rank, world, *args), buf)
        queue.put((rank, buf.getvalue(), None))
    except BaseException:  # report to the parent instead of hanging it
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_gloo(fn, world: int, *args, timeout: float = 300.0) -> list:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks (spawned processes); return results by rank."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    import tempfile

    store_dir = tempfile.mkdtemp(prefix="gloo_store_")
    store = os.path.join(store_dir, "store")
    procs = [ctx.Process(target=_entry, args=(r, world, store, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    try:
        for _ in range(world):
            rank, res, err = queue.get(timeout=timeout)
            if err:
                raise RuntimeError(f"rank {rank} failed:\n{err}")
            results[rank] = torch.load(io.BytesIO(res), weights_only=True)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]
