"""Helpers for the trainer tests: tiny model + collated batches built in code, a 2-rank gloo launcher and a
Ray-free ``Session`` that drives the real training loop. Imports no Ray."""

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
    from protclip.data.config import tiny_data_config
    from protclip.model.config import LossConfig, collate_config, tiny_model_config
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model

    mcfg = tiny_model_config(**model_overrides)
    lcfg = LossConfig()
    torch.manual_seed(seed)
    model = build_model(mcfg, lcfg)
    return model, ProtCLIPLoss(lcfg, mcfg), ProtCLIPCollator(collate_config(mcfg, lcfg, data_cfg=tiny_data_config()), seed=seed)


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


class GlooSession:
    """The training loop's :class:`~protclip.train.loop.Session` on a plain gloo process group (no Ray).

    Inside a :func:`run_gloo` worker: micro-batches come from ``batches(rank, world)`` (any iterable of collated
    dicts; ``skip`` drops the ones a resumed run already consumed), checkpoints are merged into
    ``<root>/<name>/`` shared by all ranks with ``COMMITTED`` copied last (Ray's report likewise registers a
    checkpoint only once every rank reported it), and every report's metrics are kept in ``reports``.
    """

    def __init__(self, root: str, batches, val_batches=None) -> None:
        from protclip.dist import world

        self.rank, self.world_size = world()
        self.device = torch.device("cpu")
        self.root = root
        self._batches, self._val_batches = batches, val_batches
        self.reports: list[dict[str, float]] = []
        self.checkpoints: list[str] = []

    def train_batches(self, skip: int):
        import itertools

        return itertools.islice(iter(self._batches(self.rank, self.world_size)), skip, None)

    def val_batches(self):
        return None if self._val_batches is None else iter(self._val_batches(self.rank, self.world_size))

    def latest_checkpoint(self):
        import contextlib

        from protclip.dist import gather_objects
        from protclip.train.checkpoint import latest_valid_checkpoint

        latest = latest_valid_checkpoint(self.root)
        found = None if latest is None else str(latest)
        if len(set(gather_objects(found))) != 1:
            raise RuntimeError(f"ranks picked different checkpoints in {self.root}")
        return contextlib.nullcontext(found)

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str | None) -> None:
        import shutil

        from protclip.train.checkpoint import COMMITTED

        if checkpoint_dir is not None:
            dest = os.path.join(self.root, name or f"checkpoint_{len(self.checkpoints):09d}")
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(COMMITTED))
            torch.distributed.barrier()  # every rank's shards are in place before the marker
            if os.path.isfile(os.path.join(checkpoint_dir, COMMITTED)):  # rank 0 wrote it
                shutil.copy2(os.path.join(checkpoint_dir, COMMITTED), os.path.join(dest, COMMITTED))
            torch.distributed.barrier()
            self.checkpoints.append(dest)
        self.reports.append(dict(metrics))


def tiny_run_config(steps: int, accum_steps: int = 2, micro_batch_size: int = 4, world: int = 2, **train):
    """A debug-size :class:`~protclip.train.config.TrainRunConfig`: tiny random towers, all four objectives."""
    from protclip.data.config import tiny_data_config
    from protclip.model.config import LossConfig, tiny_model_config
    from protclip.train.config import TrainConfig, TrainRunConfig

    data = tiny_data_config(uri="in-memory", micro_batch_size=micro_batch_size)
    tc = dict(num_workers=world, accum_steps=accum_steps, lr=1e-3, warmup_steps=2, max_steps=steps, val_every=0,
              ckpt_every=0, export=False, seed=0)
    tc.update(train)
    return TrainRunConfig(data=data, model=tiny_model_config(), loss=LossConfig(), train=TrainConfig(**tc))


class SyntheticBatches:
    """Picklable ``batches(rank, world)`` for :class:`GlooSession`: ``count`` collated micro-batches per rank from
    one pool of :func:`synthetic_rows` (micro-batch ``i`` of rank ``r`` is chunk ``i * world + r``), epoch 0."""

    def __init__(self, cfg, count: int, seed: int = 0) -> None:
        self.cfg, self.count, self.seed = cfg, count, seed

    def __call__(self, rank: int, world: int):
        from protclip.data.collate import ProtCLIPCollator
        from protclip.model.config import collate_config

        mb = self.cfg.data.micro_batch_size
        rows = synthetic_rows(self.count * world * mb, seed=self.seed)
        cc = collate_config(self.cfg.model, self.cfg.loss, data_cfg=self.cfg.data)
        collator = ProtCLIPCollator(cc, seed=self.cfg.data.seed)
        for i in range(self.count):
            lo = (i * world + rank) * mb
            batch = collator(rows[lo:lo + mb])
            batch["epoch"] = torch.tensor(0, dtype=torch.int64)
            yield batch


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded copies of every parameter's gradient (FSDP2 DTensor grads are gathered)."""
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name] = g.detach().clone()
    return out


def save_tiny_esm_tower(directory: str | os.PathLike) -> str:
    """A tiny random ESM-2-shaped tower saved like a pre-training export (weights + tokenizer), seed 1."""
    from transformers import EsmModel

    from protclip.data.tokenizers import ProteinTokenizer
    from protclip.model.config import RandomTowerConfig
    from protclip.model.towers import tiny_esm_config

    torch.manual_seed(1)
    EsmModel(tiny_esm_config(RandomTowerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)),
             add_pooling_layer=False).save_pretrained(directory)
    ProteinTokenizer().to_hf().save_pretrained(directory)
    return str(directory)
