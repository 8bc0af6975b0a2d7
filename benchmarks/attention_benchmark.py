"""Peak memory and time of one forward+backward of the protein tower per attention backend and length.

Each (backend, length) runs in a fresh subprocess, so the peak is not polluted by earlier settings or by
allocator caches. On CPU the peak is the process RSS above its level right before the step (sampled every
millisecond by a thread, cross-checked with ``ru_maxrss``); on CUDA it is ``torch.cuda.max_memory_allocated``.

    .venv/bin/python benchmarks/attention_benchmark.py                  # CPU, 8M geometry, writes results md
    .venv/bin/python benchmarks/attention_benchmark.py --device cuda    # adds xformers when installed

Rows whose eager attention would need more than ``--max-eager-gb`` (estimated) are skipped, not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GEOMETRIES = {  # ESM-2 shapes: hidden, layers, heads, ffn
    "esm2_8m": (320, 6, 20, 1280),
    "esm2_35m": (480, 12, 20, 1920),
    "esm2_150m": (640, 30, 20, 2560),
}


def eager_estimate_gb(geometry: str, batch: int, length: int) -> float:
    """Eager keeps one fp32 [B, H, L, L] tensor per layer (softmax output) for backward, plus ~3 transients."""
    _, layers, heads, _ = GEOMETRIES[geometry]
    return (layers + 3) * batch * heads * length * length * 4 / 2**30


# ------------------------------------------------------------------------------------------------ child
def child(args: argparse.Namespace) -> None:
    import psutil
    import torch

    from protclip.model.attention import register_backends
    from protclip.model.config import RandomTowerConfig
    from protclip.model.towers import tiny_esm_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_backends()
    hidden, layers, heads, ffn = GEOMETRIES[args.geometry]
    geom = RandomTowerConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=ffn,
                             max_positions=args.length + 2)  # fmt: skip
    from transformers import EsmModel

    dev = torch.device(args.device)
    model = EsmModel._from_config(
        tiny_esm_config(geom), attn_implementation=args.backend, add_pooling_layer=False
    )
    model.to(dev).train()
    ids = torch.randint(4, 24, (args.batch, args.length), device=dev)
    ids[:, 0], ids[:, -1] = 0, 2
    am = torch.ones_like(ids)
    if args.batch > 1:  # later rows padded to 3/4 length so the padding mask is exercised
        short = args.length * 3 // 4
        ids[1:, short - 1], ids[1:, short:], am[1:, short:] = 2, 1, 0

    def step() -> None:
        out = model(input_ids=ids, attention_mask=am).last_hidden_state
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    # warm-up at a tiny length: thread pools and kernel workspaces are set up before the baseline is taken
    model(input_ids=ids[:1, :16], attention_mask=am[:1, :16]).last_hidden_state.sum().backward()
    model.zero_grad(set_to_none=True)
    proc = psutil.Process()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() - base
        res = {"peak_mb": peak / 2**20, "first_s": t1 - t0, "time_s": t2 - t1}
    else:
        base = proc.memory_info().rss
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sampled = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                sampled.append(proc.memory_info().rss)
                time.sleep(0.001)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        step() if args.repeat else None
        t2 = time.perf_counter()
        stop.set()
        th.join()
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak = max(sampled)
        if maxrss_after > maxrss_before:  # the step set the process peak: ru_maxrss is exact
            peak = max(peak, maxrss_after)
        res = {
            "peak_mb": (peak - base) / 2**20,
            "first_s": t1 - t0,
            "time_s": (t2 - t1) if args.repeat else t1 - t0,
        }
    print("RESULT " + json.dumps(res))


# ------------------------------------------------------------------------------------------------ parent
def run_one(args: argparse.Namespace, backend: str, length: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--backend", backend, "--length", str(length),
           "--batch", str(args.batch), "--geometry", args.geometry, "--device", args.device,
           "--threads", str(args.threads)] + (["--repeat"] if args.repeat else [])  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(line[len("RESULT ") :])


def environment(device: str) -> dict[str, str]:
    import torch
    import transformers

    env = {
        "date": dt.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_name(),
        "cores (os.cpu_count)": str(os.cpu_count()),
        "memory": f"{_mem_gb():.1f} GiB",
        "load average (1 min) at the end": f"{os.getloadavg()[0]:.1f}",
    }
    try:
        env["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        env["commit"] = "unknown"
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="sdpa")
    ap.add_argument("--backends", nargs="+", default=None, help="default: eager sdpa (+ xformers on cuda)")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    ap.add_argument(
        "--batch", type=int, default=2, help="rows; rows after the first are padded to 3/4 length"
    )
    ap.add_argument("--geometry", choices=sorted(GEOMETRIES), default="esm2_8m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", action="store_true", help="time a second step (the first is warm-up)")
    ap.add_argument("--max-eager-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument(
        "--out",
        default=None,
        help="results markdown (default benchmarks/results/attention_<dev>_<yyyymm>.md)",
    )
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return

    backends = args.backends or (["eager", "sdpa"] + (["xformers"] if args.device == "cuda" else []))
    rows = []
    for length in args.lengths:
        results = {}
        for backend in backends:
            est = eager_estimate_gb(args.geometry, args.batch, length)
            if backend == "eager" and est > args.max_eager_gb:
                results[backend] = {"skipped": f"eager estimate {est:.1f} GB > {args.max_eager_gb} GB"}
            else:
                results[backend] = run_one(args, backend, length)
            print(length, backend, results[backend], flush=True)
        rows.append((length, results))

    env = environment(args.device)
    out = Path(
        args.out or REPO / "benchmarks" / "results" / f"attention_{args.device}_{dt.date.today():%Y%m}.md"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(args, backends, rows, env))
    print(f"wrote {out}")


def render(args, backends, rows, env) -> str:
    hidden, layers, heads, ffn = GEOMETRIES[args.geometry]
    lines = [
        f"# Attention backends: one forward+backward of the protein tower ({args.device})",
        "",
        f"Geometry `{args.geometry}` (hidden {hidden}, {layers} layers, {heads} heads, ffn {ffn}, rotary), "
        f"random init, fp32, batch {args.batch}" + (" (rows after the first padded to 3/4 length, so the "
        "padding mask is in play)" if args.batch > 1 else "") + f", {args.threads} threads. "
        "Each cell is a fresh subprocess. Peak = memory above the process level right before the step "
        + ("(CUDA max_memory_allocated)." if args.device == "cuda" else "(RSS, sampled every ms and checked "
           "against ru_maxrss) after a warm-up step at length 16.") + (" Time = second step." if args.repeat else " Time = one step, no warm-up."),
        "",
        "Command: `.venv/bin/python benchmarks/attention_benchmark.py "
        + " ".join(a for a in sys.argv[1:] if a != "--child") + "`",
        "",
        "| " + " | ".join(f"{k}: {v}" for k, v in env.items()) + " |",
        "",
    ]  # fmt: skip
    head = "| L | " + " | ".join(f"{b} peak MiB | {b} s" for b in backends) + " | " + " | ".join(
        f"{b}/eager peak" for b in backends if b != "eager") + " |"  # fmt: skip
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for length, res in rows:
        cells = []
        for b in backends:
            r = res[b]
            if "peak_mb" in r:
                cells += [f"{r['peak_mb']:.0f}", f"{r['time_s']:.2f}"]
            else:
                cells += [r.get("skipped") or "error: " + r.get("error", "?"), "–"]
        ratios = []
        for b in backends:
            if b == "eager":
                continue
            e, r = res.get("eager", {}), res[b]
            ratios.append(f"{r['peak_mb'] / e['peak_mb']:.3f}" if "peak_mb" in e and "peak_mb" in r else "–")
        lines.append(f"| {length} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
