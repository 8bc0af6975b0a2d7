#!/usr/bin/env python
"""GPU: packed vs padded micro-batches of the full ProtCLIP step (ESM-2 650M + PubMedBERT-base geometry, bf16,
FSDP2 on one GPU), per attention backend (xformers, sdpa, eager): unpadded tokens/s, MFU (from unpadded FLOPs),
peak memory, and the longest single protein whose training step fits in 80 GiB.

One command (no Ray, no download; random-init towers from the hub configs in ``benchmarks/gpu_mfu.py``; FSDP2
over a one-rank NCCL process group, as the trainer runs)::

    python benchmarks/gpu_packing.py --out benchmarks/results/gpu_packing_h100_<yyyymm>.md
    python benchmarks/gpu_packing.py --tiny-cpu-smoke     # the same code path on a CPU (gloo, tiny towers)

Activation checkpointing is on by default, as ``jobs/configs/paper.yaml`` trains at this token budget (without it
the three ESM passes of a 16,384-token micro-batch hold roughly 1.5 MB of bf16 activations per token and pass,
about 70 GB, before the padded batch's extra slots); ``--no-activation-checkpointing`` measures without it
(with a smaller ``--max-tokens``).

Duration: an estimate from the FLOPs, not a measurement (the script has not run on a GPU yet): 6 throughput rows
(3 backends x packed/padded), each building the 760M-parameter model anew (tens of seconds) and timing
``--warmup`` + ``--steps`` steps of ~0.2 PFLOP of model FLOPs (under ~1 s at 45% MFU, several seconds for eager),
about 4-5 minutes; then one model per backend for the length probe, one step per length up to the first OOM
(a 65,536-token protein is ~10 PFLOP with recompute, ~20 s), about 3-4 minutes: 8-10 minutes on an H100.
``--budget-min`` (default 10) bounds it by design: once the run has used that long, the units not yet started are
skipped and reported as such.

The length probe runs with the caching allocator capped at ``--memory-cap-gib`` (default 80, the H100's
capacity) through ``torch.cuda.set_per_process_memory_fraction`` when the card is larger (an H200), so both
cards answer "what trains at 80 GB"; the CUDA context and libraries' workspaces sit outside the cap. Eager
attention materialises ``T x T`` scores per layer and is expected to run out of memory at the default token
budget; an out-of-memory row is reported as such and the run goes on.

A micro-batch holds the rows of a random draw of real UniProt corpus lengths (``manifest.tsv`` of the shared
data; cropped at ``--max-protein-length``) until ``--max-tokens`` protein tokens: packed = those rows end to
end, padded = the same rows padded to the longest (random order, so padding is what random batching gives).
Exits with code 2 and one line when CUDA is absent.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_mfu  # noqa: E402  (same folder: model geometry, builder, versions)


def corpus_lengths(max_len: int) -> list[int]:
    """Protein token counts (residues + cls/eos, cropped) of the real UniProt corpus entries."""
    from protclip.paths import shared_data_dir

    path = shared_data_dir() / "uniprot_corpus" / "manifest.tsv"
    with open(path) as f:
        return [min(int(r["length"]), max_len - 2) + 2 for r in csv.DictReader(f, delimiter="\t")]


def draw_rows(lengths: list[int], max_tokens: int, seed: int) -> list[int]:
    """Lengths of the rows of one micro-batch: a random draw filled up to the token budget."""
    g = torch.Generator().manual_seed(seed)
    out, used = [], 0
    for i in torch.randperm(len(lengths), generator=g).tolist():
        if used + lengths[i] > max_tokens:
            break
        out.append(lengths[i])
        used += lengths[i]
    return out


def rows_batch(plens: list[int], device: torch.device, seed: int = 0) -> dict:
    """A padded batch of proteins of the given lengths (texts 64..256 tokens, sub-texts 16..64)."""
    g = torch.Generator().manual_seed(seed)
    b, lp = len(plens), max(plens)
    tl = torch.randint(64, 257, (b,), generator=g)
    sl = torch.randint(16, 65, (b, 4), generator=g)
    base = gpu_mfu.random_batch(b, lp, int(tl.max()), int(sl.max()), torch.device("cpu"), seed)
    pmask = torch.arange(lp)[None] < torch.tensor(plens)[:, None]
    tmask = torch.arange(int(tl.max()))[None] < tl[:, None]
    smask = torch.arange(int(sl.max()))[None, None] < sl[..., None]
    ends = torch.tensor(plens) - 1
    for k in ("protein_input_ids", "mlm_input_ids", "span_input_ids"):
        base[k] = torch.where(pmask, base[k], torch.ones_like(base[k]))
        base[k][torch.arange(b), ends] = 2  # <eos> at each protein's own end
    for k in ("mlm_labels", "span_labels"):
        base[k] = torch.where(pmask, base[k], torch.full_like(base[k], -100))
        base[k][torch.arange(b), ends] = -100
    base["protein_attention_mask"] = pmask.long()
    vocab = int(gpu_mfu.PUBMEDBERT["vocab_size"])  # 30522, or the smoke's tiny vocabulary
    base["text_input_ids"] = torch.where(tmask, base["text_input_ids"] % vocab, 0)
    base["text_attention_mask"] = tmask.long()
    base["subtext_input_ids"] = torch.where(smask, base["subtext_input_ids"] % vocab, 0)
    base["subtext_attention_mask"] = smask.long()
    return {k: v.to(device) for k, v in base.items()}


def build_packed_aware(attention: str, device: torch.device):
    """gpu_mfu's model, with the towers switched to the packed-aware attention wrappers the trainer builds."""
    from protclip.model.attention import PACKED_AWARE

    model, mcfg, lcfg, impl = gpu_mfu.build(attention, device)
    for tower in (model.protein_tower, model.text_tower):
        tower.set_attn_implementation(PACKED_AWARE[impl])
    return model, mcfg, lcfg, PACKED_AWARE[impl]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One backend's model as the trainer runs it (FSDP2, bf16 params on CUDA, AdamW, the four objectives):
    built once, then timed on the batches given (the length probe reuses it, optimizer state included)."""

    def __init__(self, attention: str, ac: bool, device: torch.device) -> None:
        from protclip.model.losses import ProtCLIPLoss
        from protclip.train.meter import step_flops_fn
        from protclip.train.optim import build_optimizer
        from protclip.train.parallelize import parallelize

        torch.manual_seed(0)
        model, mcfg, lcfg, _ = build_packed_aware(attention, device)
        self.attention = attention
        model.to(device)

        class _Cfg:  # what step_flops_fn reads
            model, loss = mcfg, lcfg

        self.flops_of = step_flops_fn(model, _Cfg)
        bf16 = torch.bfloat16 if device.type == "cuda" else None
        parallelize(model, device_type=device.type, param_dtype=bf16, activation_checkpointing=ac)
        model.train()
        self.model, self.device = model, device
        self.opt = build_optimizer(model, 1e-5, 0.1, 0.0, (0.9, 0.999), 1e-8)
        self.loss_fn = ProtCLIPLoss(lcfg, mcfg)

    def measure(self, batch: dict, packed: bool, steps: int, warmup: int) -> dict:
        """Median step time of ``steps`` timed steps (after ``warmup``) on ``batch`` (padded), packed or not."""
        from protclip.data.collate import batch_rows, pack_batch
        from protclip.train.flops import mfu, peak_flops
        from protclip.train.optim import guarded_step
        from protclip.train.step import forward_backward

        dev = self.device
        mb = pack_batch(batch) if packed else batch
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for i in range(warmup + steps):
            _sync(dev)
            t0 = time.perf_counter()
            vals = forward_backward(self.model, self.loss_fn, [mb]).values
            guarded_step(self.model, self.opt, None, vals["loss"], 1.0, dev)
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        step_s = sorted(times)[len(times) // 2]
        real = int(batch["protein_attention_mask"].sum()) + int(batch["text_attention_mask"].sum())
        slots = batch["protein_attention_mask"].numel() + batch["text_attention_mask"].numel()
        flops = self.flops_of([mb])
        peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        return {"attention": self.attention, "packed": packed, "pairs": batch_rows(mb), "step_s_median": step_s,
                "unpadded_tokens_per_s": real / step_s, "padded_tokens_per_s": (real if packed else slots) / step_s,
                "tflops_per_step": flops / 1e12, "mfu": mfu(flops, step_s, 1, peak_flops(dev)),
                "peak_mem_gib": peak_mem, "loss": vals["loss"]}  # fmt: skip


def _out_of_memory(e: BaseException) -> bool:
    """A CUDA out-of-memory error (some kernels raise a plain RuntimeError with the allocator's message)."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def _release(device: torch.device) -> None:
    """Free what a finished or failed unit left (its frames are gone once the caller's except block ended)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run(attention: str, batch: dict, packed: bool, steps: int, warmup: int, ac: bool, device: torch.device) -> dict:
    """One throughput row on a freshly built model (so its peak memory is this row's alone); an out-of-memory
    error becomes the row's ``oom`` field instead of ending the run."""
    row, oom, bench = None, None, None
    try:
        bench = Bench(attention, ac, device)
        row = bench.measure(batch, packed, steps, warmup)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        oom = str(e).splitlines()[0][:160]
    bench = None
    _release(device)
    if row is None:
        from protclip.data.collate import batch_rows

        row = {"attention": attention, "packed": packed, "pairs": batch_rows(batch)}
    return row | {"oom": oom}


def longest_protein(attention: str, ac: bool, device: torch.device, lengths: tuple[int, ...],
                    deadline: float = float("inf")) -> dict:
    """Longest single protein (a packed micro-batch of one row) whose full training step fits: one step per
    length, in increasing order, on one model per backend, until the first out-of-memory error."""
    best, err, bench, late = None, None, None, None
    try:
        bench = Bench(attention, ac, device)
        for lp in sorted(lengths):
            if time.monotonic() > deadline:
                late = lp
                break
            bench.measure(rows_batch([lp], device), packed=True, steps=1, warmup=0)
            best = lp
            _release(device)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        err = str(e).splitlines()[0][:160]
    bench = None
    _release(device)
    return {"attention": attention, "activation_checkpointing": ac, "max_protein_len": best, "first_oom": err,
            "not_tried_from": late}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


def _init_process_group(backend: str) -> None:
    """The one-rank process group FSDP2 shards over (``parallelize`` refuses to run without one)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def cap_memory(device: torch.device, cap_gib: float) -> dict:
    """Cap the caching allocator at ``cap_gib`` when the card holds more (an H200 answering for an H100)."""
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    fraction = min(1.0, cap_gib / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return {"card_gib": round(total, 1), "cap_gib": cap_gib, "fraction": round(fraction, 4)}


def versions(device: torch.device) -> dict:
    if device.type == "cuda":
        return gpu_mfu._versions()
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)"}


def measure_all(a: argparse.Namespace, device: torch.device) -> dict:
    """Throughput rows (every backend, padded then packed, the same rows), then the length probe."""
    from protclip.model.attention import xformers_available

    t0 = time.monotonic()
    deadline = t0 + 60 * a.budget_min
    backends = [b for b in a.attention if b != "xformers" or xformers_available()]
    batch = rows_batch(draw_rows(corpus_lengths(a.max_protein_length), a.max_tokens, seed=0), device)
    res = {"versions": versions(device), "args": vars(a), "skipped": sorted(set(a.attention) - set(backends)),
           "rows": [], "maxlen": [], "not_run": [], "memory_cap": None}  # fmt: skip
    for backend in backends:
        for packed in (False, True):
            if time.monotonic() > deadline:
                res["not_run"].append(f"{backend} {'packed' if packed else 'padded'}")
                continue
            r = run(backend, batch, packed, a.steps, a.warmup, a.activation_checkpointing, device)
            print(json.dumps(r), flush=True)
            res["rows"].append(r)
    if not a.skip_maxlen:
        if device.type == "cuda":
            res["memory_cap"] = cap_memory(device, a.memory_cap_gib)
        for backend in backends:
            r = longest_protein(backend, a.activation_checkpointing, device, tuple(a.maxlen), deadline)
            print(json.dumps(r), flush=True)
            res["maxlen"].append(r)
    res["wall_s"] = time.monotonic() - t0
    return res


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    lines = ["# Packed vs padded, full ProtCLIP step (ESM-2 650M + PubMedBERT-base geometry, bf16, FSDP2)", "",
             f"- versions: `{json.dumps(res['versions'])}`", f"- args: `{json.dumps(res['args'])}`",
             f"- backends not installed: {res['skipped'] or 'none'}",
             f"- length probe memory cap: `{json.dumps(res['memory_cap'])}`",
             f"- not run (time budget): {res['not_run'] or 'none'}; wall time {res['wall_s']:.0f} s", "",
             "| attention | batching | pairs | unpadded tok/s | padded tok/s | TFLOP/step | MFU | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        head = f"| {r['attention']} | {'packed' if r['packed'] else 'padded'} | {r['pairs']} |"
        if r["oom"]:
            lines.append(f"{head} out of memory: {r['oom']} | | | | |")
            continue
        lines.append(f"{head} {r['unpadded_tokens_per_s']:.0f} | {r['padded_tokens_per_s']:.0f} | "
                     f"{r['tflops_per_step']:.2f} | {_num(r['mfu'], '.3f')} | {_num(r['peak_mem_gib'], '.1f')} |")
    lines += ["", "| attention | longest single protein that trains | first OOM | not tried (time budget) from |",
              "|---|---|---|---|"]
    for r in res["maxlen"]:
        best = r["max_protein_len"]
        if best is not None and r["first_oom"] is None and r["not_tried_from"] is None:
            best = f">= {best} (longest tried)"
        lines.append(f"| {r['attention']} | {best} | {r['first_oom'] or ''} | {r['not_tried_from'] or ''} |")
    return "\n".join(lines) + "\n"


def _tiny_towers() -> None:
    """Shrink the hub geometries to tiny towers (the smoke checks the script, its numbers mean nothing)."""
    gpu_mfu.ESM2_650M.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    gpu_mfu.PUBMEDBERT.update(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=16384, help="protein tokens per micro-batch")
    ap.add_argument("--max-protein-length", type=int, default=4096)
    ap.add_argument("--attention", nargs="+", default=["xformers", "sdpa", "eager"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="recompute layer activations in backward (default on, as jobs/configs/paper.yaml)")
    ap.add_argument("--maxlen", type=int, nargs="+", default=[4096, 8192, 12288, 16384, 24576, 32768, 49152, 65536],
                    help="protein lengths the probe tries, shortest first, up to the first out-of-memory error")
    ap.add_argument("--skip-maxlen", action="store_true")
    ap.add_argument("--memory-cap-gib", type=float, default=80.0, help="allocator cap of the length probe")
    ap.add_argument("--budget-min", type=float, default=10.0,
                    help="units (rows, probe lengths) not started after this many minutes are skipped")
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--tiny-cpu-smoke", action="store_true",
                    help="check the script on a CPU: tiny towers, gloo, small budgets, 2 steps (numbers meaningless)")
    a = ap.parse_args(argv)
    if a.tiny_cpu_smoke:
        _tiny_towers()
        a.max_tokens, a.max_protein_length, a.steps, a.warmup, a.maxlen = 384, 128, 1, 1, [64, 128]
        a.attention = [b for b in a.attention if b != "xformers"]  # no CPU kernels (its emulation is tested)
        device, backend = torch.device("cpu"), "gloo"
    elif not torch.cuda.is_available():
        print("gpu_packing: CUDA is not available on this machine; this benchmark needs one GPU "
              "(--tiny-cpu-smoke checks the script on a CPU)", file=sys.stderr)
        return 2
    else:
        device, backend = torch.device("cuda", 0), "nccl"
        torch.cuda.set_device(device)
    _init_process_group(backend)
    try:
        res = measure_all(a, device)
    finally:
        torch.distributed.destroy_process_group()
    text = markdown(res)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
