"""The Ray Train side of a LoRA fine-tuning worker: ``train_loop_per_worker`` wraps the Ray-free loop
(:func:`protclip.finetune.loop.run_worker`) with its Ray context, checkpoint reporting and resume directory.

The driver that prepares the data and builds the ``TorchTrainer`` is :mod:`protclip.recipes.finetune_lora`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from protclip.config import from_dict
from protclip.finetune.config import FinetuneConfig
from protclip.finetune.loop import WorkerEnv, run_worker

__all__ = ["worker_entry"]


def worker_entry(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: rebuild the config, fetch the prepared data, run the loop with Ray's context."""
    import ray
    import ray.train

    cfg = from_dict(FinetuneConfig, config["cfg"])
    data = ray.get(config["data"]) if isinstance(config["data"], ray.ObjectRef) else config["data"]
    ctx = ray.train.get_context()

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, checkpoint=ckpt)

    @contextmanager
    def resume_dir():
        ckpt = ray.train.get_checkpoint()
        if ckpt is None and cfg.run.resume_from:
            ckpt = ray.train.Checkpoint(cfg.run.resume_from)
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    import ray.train.torch

    device = str(ray.train.torch.get_device()) if cfg.train.use_gpu else "cpu"
    env = WorkerEnv(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                    device=device, report=report, resume_dir=resume_dir)
    run_worker(cfg, config["job"], data, env)
