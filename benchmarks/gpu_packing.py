#!/usr/bin/env python
"""GPU: packed vs padded micro-batches of the full ProtCLIP step (ESM-2 650M + PubMedBERT-base geometry, bf16,
FSDP2 on one GPU), per attention backend (xformers, sdpa, eager): unpadded tokens/s, MFU (from unpadded FLOPs),
peak memory, and the longest single protein whose training step fits.

One command, about 10 minutes on an H100 (no Ray, no download; random-init towers from the hub configs in
``benchmarks/gpu_mfu.py``)::

    python benchmarks/gpu_packing.py --out benchmarks/results/gpu_packing_h100_<yyyymm>.md

A micro-batch holds the rows of a random draw of real UniProt corpus lengths (``manifest.tsv`` of the shared
data; cropped at ``--max-protein-length``) until ``--max-tokens`` protein tokens: packed = those rows end to
end, padded = the same rows padded to the longest (random order, so padding is what random batching gives).
Exits with code 2 and one line when CUDA is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
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
    base["text_input_ids"] = torch.where(tmask, base["text_input_ids"], torch.zeros_like(base["text_input_ids"]))
    base["text_attention_mask"] = tmask.long()
    base["subtext_input_ids"] = torch.where(smask, base["subtext_input_ids"], 0)
    base["subtext_attention_mask"] = smask.long()
    return {k: v.to(device) for k, v in base.items()}


def build_packed_aware(attention: str, device: torch.device):
    """gpu_mfu's model, with the towers switched to the packed-aware attention wrappers the trainer builds."""
    from protclip.model.attention import PACKED_AWARE

    model, mcfg, lcfg, impl = gpu_mfu.build(attention, device)
    for tower in (model.protein_tower, model.text_tower):
        tower.set_attn_implementation(PACKED_AWARE[impl])
    return model, mcfg, lcfg, PACKED_AWARE[impl]


def run(attention: str, batch: dict, packed: bool, steps: int, warmup: int, ac: bool, device: torch.device) -> dict:
    from protclip.data.collate import batch_rows, pack_batch
    from protclip.model.losses import ProtCLIPLoss
    from protclip.train.flops import mfu, peak_flops
    from protclip.train.meter import step_flops_fn
    from protclip.train.optim import build_optimizer, guarded_step
    from protclip.train.parallelize import parallelize
    from protclip.train.step import forward_backward

    torch.manual_seed(0)
    model, mcfg, lcfg, impl = build_packed_aware(attention, device)
    model.to(device)

    class _Cfg:
        model, loss = mcfg, lcfg

    flops_of = step_flops_fn(model, _Cfg)
    parallelize(model, device_type="cuda", param_dtype=torch.bfloat16, activation_checkpointing=ac)
    model.train()
    opt = build_optimizer(model, 1e-5, 0.1, 0.0, (0.9, 0.999), 1e-8)
    loss_fn = ProtCLIPLoss(lcfg, mcfg)
    mb = pack_batch(batch) if packed else batch
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        vals = forward_backward(model, loss_fn, [mb]).values
        guarded_step(model, opt, None, vals["loss"], 1.0, device)
        torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    real = int(batch["protein_attention_mask"].sum()) + int(batch["text_attention_mask"].sum())
    slots = batch["protein_attention_mask"].numel() + batch["text_attention_mask"].numel()
    flops = flops_of([mb])
    out = {"attention": impl, "packed": packed, "pairs": batch_rows(mb), "step_s_median": step_s,
           "unpadded_tokens_per_s": real / step_s, "padded_tokens_per_s": (real if packed else slots) / step_s,
           "mfu": mfu(flops, step_s, 1, peak_flops(device)), "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
           "loss": vals["loss"]}  # fmt: skip
    del model, opt
    torch.cuda.empty_cache()
    return out


def longest_protein(attention: str, ac: bool, device: torch.device, lengths: tuple[int, ...]) -> dict:
    """Longest single protein (packed micro-batch of one row) whose full training step fits."""
    best, err = None, None
    for lp in lengths:
        try:
            run(attention, rows_batch([lp], device), packed=True, steps=1, warmup=0, ac=ac, device=device)
            best = lp
        except torch.OutOfMemoryError as e:
            err = str(e).splitlines()[0][:160]
            torch.cuda.empty_cache()
            break
    return {"attention": attention, "activation_checkpointing": ac, "max_protein_len": best, "first_oom": err}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-tokens", type=int, default=16384, help="protein tokens per micro-batch")
    ap.add_argument("--max-protein-length", type=int, default=4096)
    ap.add_argument("--attention", nargs="+", default=["xformers", "sdpa", "eager"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--maxlen", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    ap.add_argument("--skip-maxlen", action="store_true")
    ap.add_argument("--out", type=str, default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_packing: CUDA is not available on this machine; this benchmark needs one GPU", file=sys.stderr)
        return 2
    from protclip.model.attention import xops

    device = torch.device("cuda")
    backends = [b for b in a.attention if b != "xformers" or xops is not None]
    lengths = corpus_lengths(a.max_protein_length)
    batch = rows_batch(draw_rows(lengths, a.max_tokens, seed=0), device)
    res = {"versions": gpu_mfu._versions(), "args": vars(a), "skipped": sorted(set(a.attention) - set(backends)),
           "rows": [], "maxlen": []}
    for backend in backends:
        for packed in (False, True):
            r = run(backend, batch, packed, a.steps, a.warmup, a.activation_checkpointing, device)
            print(json.dumps(r), flush=True)
            res["rows"].append(r)
    if not a.skip_maxlen:
        for backend in backends:
            r = longest_protein(backend, a.activation_checkpointing, device, tuple(a.maxlen))
            print(json.dumps(r), flush=True)
            res["maxlen"].append(r)
    lines = ["# Packed vs padded, GPU, full ProtCLIP step (ESM-2 650M + PubMedBERT-base geometry, bf16, FSDP2)", "",
             f"- versions: `{json.dumps(res['versions'])}`", f"- args: `{json.dumps(res['args'])}`",
             f"- backends not installed: {res['skipped'] or 'none'}", "",
             "| attention | batching | pairs | unpadded tok/s | padded tok/s | MFU | peak GiB |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        m = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['attention']} | {'packed' if r['packed'] else 'padded'} | {r['pairs']} | "
                     f"{r['unpadded_tokens_per_s']:.0f} | {r['padded_tokens_per_s']:.0f} | {m} | {r['peak_mem_gib']:.1f} |")
    lines += ["", "| attention | longest single protein that trains | first OOM |", "|---|---|---|"]
    lines += [f"| {r['attention']} | {r['max_protein_len']} | {r['first_oom'] or ''} |" for r in res["maxlen"]]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
