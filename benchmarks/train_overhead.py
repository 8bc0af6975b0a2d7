#!/usr/bin/env python
"""CPU trainer benchmarks: (1) Ray Train step time vs a plain single-process torch loop on the same tiny model
and batches (target <= 1.05x); (2) pairs/s with 2 Ray Train workers vs 1 (target >= 1.8x).

Both sides run the trainer's own step (``forward_backward`` with the four objectives + ``guarded_step``) on the
same pre-collated micro-batches held in memory, so the difference is Ray Train (worker process, process group,
FSDP2 when asked) and not the data pipeline (measured separately in pipeline_benchmark.py). Step times are
medians after warm-up, measured inside the loop (Ray start-up and the ~20 s per-fit fixed cost are excluded and
reported separately).

    python benchmarks/train_overhead.py --steps 40 --out benchmarks/results/train_overhead_cpu_202611.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import protclip.runtime  # noqa: E402,F401  (loopback Ray)


def _setup(seed: int = 0):
    from protclip.data.collate import ProtCLIPCollator
    from protclip.data.config import tiny_data_config
    from protclip.model.config import LossConfig, collate_config, tiny_model_config
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model

    mcfg, lcfg = tiny_model_config(), LossConfig()
    torch.manual_seed(seed)
    return build_model(mcfg, lcfg), ProtCLIPLoss(lcfg, mcfg), ProtCLIPCollator(collate_config(mcfg, lcfg, data_cfg=tiny_data_config()), seed=seed)


def _batches(n: int, mbs: int, rank: int = 0) -> list[dict[str, torch.Tensor]]:
    from tests.helpers.train import synthetic_rows

    _, _, collator = _setup()
    return [collator(synthetic_rows(mbs, seed=1000 * rank + i, min_len=60, max_len=128)) for i in range(n)]


def _loop(model, loss_fn, batches, steps: int, warmup: int, accum: int, fsdp: bool) -> list[float]:
    from protclip.train.optim import build_optimizer, guarded_step
    from protclip.train.parallelize import parallelize
    from protclip.train.step import forward_backward

    if fsdp:
        parallelize(model)
    opt = build_optimizer(model, 1e-3, 0.1, 0.0, (0.9, 0.999), 1e-8)
    model.train()
    times, cpu = [], []
    for i in range(warmup + steps):
        mbs = [batches[(i * accum + a) % len(batches)] for a in range(accum)]
        t0, c0 = time.perf_counter(), time.process_time()
        vals = forward_backward(model, loss_fn, mbs).values
        guarded_step(model, opt, None, vals["loss"], 1.0, torch.device("cpu"))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return times, cpu


def plain(steps: int, warmup: int, mbs: int, accum: int) -> tuple[list[float], list[float]]:
    torch.set_num_threads(1)
    model, loss_fn, _ = _setup()
    return _loop(model, loss_fn, _batches(8, mbs), steps, warmup, accum, fsdp=False)


def _ray_worker(config: dict) -> None:
    import ray.train

    torch.set_num_threads(1)
    rank = ray.train.get_context().get_world_rank()
    model, loss_fn, _ = _setup()
    batches = _batches(8, config["mbs"], rank)
    t0 = time.perf_counter()
    times, cpu = _loop(model, loss_fn, batches, config["steps"], config["warmup"], config["accum"], config["fsdp"])
    if rank == 0:
        Path(config["out"]).write_text(json.dumps({"times": times, "cpu": cpu, "loop_s": time.perf_counter() - t0}))


def ray_run(workers: int, steps: int, warmup: int, mbs: int, accum: int, fsdp: bool
            ) -> tuple[list[float], list[float], float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "times.json")
        t0 = time.perf_counter()
        TorchTrainer(_ray_worker, train_loop_config={"steps": steps, "warmup": warmup, "mbs": mbs, "accum": accum,
                                                     "fsdp": fsdp, "out": out},
                     torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                                  resources_per_worker={"CPU": 1}),
                     run_config=RunConfig(name=f"bench-{workers}-{int(time.time())}", storage_path=d)).fit()
        fit_s = time.perf_counter() - t0
        res = json.loads(Path(out).read_text())
    return res["times"], res["cpu"], fit_s - res["loop_s"]


def _env() -> dict:
    import ray
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, cwd=Path(__file__).parent).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = "unknown"
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_avg_1m_at_start": os.getloadavg()[0], "torch": torch.__version__, "ray": ray.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "commit": commit,
            "date": datetime.date.today().isoformat()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from protclip.runtime import init_ray

    env = _env()
    init_ray(num_cpus=4)
    med = statistics.median
    res, cpu = {}, {}
    t, c = plain(args.steps, args.warmup, args.micro_batch, args.accum)
    res["plain"], cpu["plain"] = med(t), med(c)
    t, c, fixed1 = ray_run(1, args.steps, args.warmup, args.micro_batch, args.accum, fsdp=False)
    res["ray_1w"], cpu["ray_1w"] = med(t), med(c)
    t, c, _ = ray_run(1, args.steps, args.warmup, args.micro_batch, args.accum, fsdp=True)
    res["ray_1w_fsdp"], cpu["ray_1w_fsdp"] = med(t), med(c)
    t, c, fixed2 = ray_run(2, args.steps, args.warmup, args.micro_batch, args.accum, fsdp=True)
    res["ray_2w_fsdp"], cpu["ray_2w_fsdp"] = med(t), med(c)
    rows = args.micro_batch * args.accum
    pairs1, pairs2 = rows / res["ray_1w_fsdp"], 2 * rows / res["ray_2w_fsdp"]
    env["load_avg_1m_at_end"] = os.getloadavg()[0]
    md = "\n".join([
        f"# Ray Train overhead and 2-worker scaling on CPU ({env['date']})", "",
        f"{env['cores']} cores ({env['cpu']}), load average {env['load_avg_1m_at_start']:.1f} at start / "
        f"{env['load_avg_1m_at_end']:.1f} at end (shared machine); torch {env['torch']}, ray {env['ray']}, "
        f"transformers {env['transformers']}, Python {env['python']}, commit {env['commit']}.",
        f"Command: `python benchmarks/train_overhead.py {' '.join(sys.argv[1:])}`. Tiny model (ESM 64x2, BERT "
        f"64x2), micro-batch {args.micro_batch}, accumulation {args.accum}, all four objectives, 1 thread per "
        f"process, median of {args.steps} steps after {args.warmup} warm-up.", "",
        "Wall time is what a user sees but is dominated by other processes on a loaded machine; process CPU time "
        "per step (rank 0) measures the work each setup adds and is robust to that load.", "",
        "| setup | wall step (ms) | wall vs plain | CPU step (ms) | CPU vs plain |", "|---|---|---|---|---|",
        *[f"| {k} | {v * 1e3:.1f} | {v / res['plain']:.3f}x | {cpu[k] * 1e3:.1f} | {cpu[k] / cpu['plain']:.3f}x |"
          for k, v in res.items()], "",
        f"Pairs/s (FSDP2): 1 worker {pairs1:.1f}, 2 workers {pairs2:.1f} -> **{pairs2 / pairs1:.2f}x**.", "",
        f"Fixed cost per fit outside the training loop: {fixed1:.1f} s (1 worker), {fixed2:.1f} s (2 workers).",
        "",
    ])
    print(md)
    if args.out:
        Path(args.out).write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
