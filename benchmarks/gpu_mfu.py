#!/usr/bin/env python
"""GPU MFU of the full ProtCLIP step (ESM-2 650M + PubMedBERT-abs, bf16, FSDP2 on one GPU) and the longest
trainable protein length per attention backend.

No Ray, no download: the towers are random-init from the known hub configs written out below, so the script runs
on an air-gapped GPU box. It runs the trainer's own code path: ``parallelize`` (FSDP2, bf16 params, fp32
reduce), ``forward_backward`` (the four objectives), ``guarded_step`` (AdamW, clipping) and the FLOPs formula of
``protclip.train.flops`` (the MFU logged during training).

    python benchmarks/gpu_mfu.py                               # MFU at L=512 + max length for sdpa/xformers/eager
    python benchmarks/gpu_mfu.py --length 1024 --batch 8 --skip-maxlen
    python benchmarks/gpu_mfu.py --out benchmarks/results/gpu_mfu_h100_202611.md

Writes a Markdown result (hardware, versions, commit, numbers) to ``--out`` (default: stdout only).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import BertConfig, BertModel, EsmConfig, EsmModel  # noqa: E402

from protclip.model.config import LossConfig, ModelConfig  # noqa: E402

#: facebook/esm2_t33_650M_UR50D config.json (the fields that matter for compute)
ESM2_650M = dict(vocab_size=33, hidden_size=1280, num_hidden_layers=33, num_attention_heads=20,
                 intermediate_size=5120, max_position_embeddings=1026, position_embedding_type="rotary",
                 emb_layer_norm_before=False, token_dropout=True, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5)
#: microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract config.json (BERT-base, own 30522-token vocab)
PUBMEDBERT = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0,
                  hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(attention: str, device: torch.device):
    from protclip.model.attention import register_backends, resolve_backend
    from protclip.model.protclip import ProtCLIPModel

    register_backends()
    impl = resolve_backend(attention, device)
    protein = EsmModel._from_config(EsmConfig(**copy.deepcopy(ESM2_650M)), attn_implementation=impl,
                                    add_pooling_layer=False)
    protein.contact_head.requires_grad_(False)
    text = BertModel._from_config(BertConfig(**copy.deepcopy(PUBMEDBERT)), attn_implementation=impl,
                                  add_pooling_layer=False)
    mcfg = ModelConfig(attention=attention)  # the batches below are built directly, at their own lengths
    lcfg = LossConfig()
    return ProtCLIPModel(mcfg, lcfg, protein_tower=protein, text_tower=text), mcfg, lcfg, impl


def random_batch(b: int, lp: int, lt: int, ls: int, device: torch.device, seed: int = 0) -> dict:
    """Full-length proteins (no padding) with 15% MLM and ~15% span targets, texts of ``lt`` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 24, (b, lp), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    am = torch.ones_like(ids)
    sel = torch.rand(b, lp, generator=g) < 0.15
    sel[:, 0] = sel[:, -1] = False
    mlm_labels = torch.where(sel, ids, torch.full_like(ids, -100))
    span = torch.zeros(b, lp, dtype=torch.bool)
    for i in range(b):
        covered = 0
        while covered < 0.15 * (lp - 2):
            n = int(torch.randint(5, 11, (1,), generator=g))
            s = int(torch.randint(1, max(2, lp - 1 - n), (1,), generator=g))
            span[i, s:s + n] = True
            covered += n
    span[:, 0] = span[:, -1] = False
    text = torch.randint(1000, 30000, (b, lt), generator=g)
    text[:, 0], text[:, -1] = 2, 3
    sub = torch.randint(1000, 30000, (b, 4, ls), generator=g)
    batch = {
        "protein_input_ids": ids, "protein_attention_mask": am,
        "mlm_input_ids": torch.where(sel, torch.full_like(ids, 32), ids), "mlm_labels": mlm_labels,
        "span_input_ids": torch.where(span, torch.full_like(ids, 32), ids),
        "span_labels": torch.where(span, ids, torch.full_like(ids, -100)),
        "text_input_ids": text, "text_attention_mask": torch.ones_like(text),
        "subtext_input_ids": sub, "subtext_attention_mask": torch.ones_like(sub),
        "property_present": torch.ones(b, 4, dtype=torch.long),
    }  # fmt: skip
    return {k: v.to(device) for k, v in batch.items()}


def run_steps(attention: str, b: int, lp: int, lt: int, ls: int, steps: int, warmup: int, ac: bool,
              device: torch.device) -> dict:
    from protclip.model.losses import ProtCLIPLoss
    from protclip.train.flops import mfu, peak_flops
    from protclip.train.meter import step_flops_fn
    from protclip.train.optim import build_optimizer, guarded_step
    from protclip.train.parallelize import parallelize
    from protclip.train.step import forward_backward

    torch.manual_seed(0)
    model, mcfg, lcfg, impl = build(attention, device)
    model.to(device)

    class _Cfg:  # what step_flops_fn reads
        model, loss = mcfg, lcfg

    flops_of = step_flops_fn(model, _Cfg)
    n_params = sum(p.numel() for p in model.parameters())
    bf16 = torch.bfloat16 if device.type == "cuda" else None
    parallelize(model, device_type=device.type, param_dtype=bf16, activation_checkpointing=ac)
    model.train()
    opt = build_optimizer(model, 1e-5, 0.1, 0.0, (0.9, 0.999), 1e-8)
    loss_fn = ProtCLIPLoss(lcfg, mcfg)
    batch = random_batch(b, lp, lt, ls, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        vals = forward_backward(model, loss_fn, [batch]).values
        guarded_step(model, opt, None, vals["loss"], 1.0, device)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    flops = flops_of([batch])
    peak = peak_flops(device)
    out = {"attention": impl, "batch": b, "protein_len": lp, "text_len": lt, "subtext_len": ls,
           "activation_checkpointing": ac, "params": n_params, "step_s_median": step_s,
           "pairs_per_s": b / step_s, "protein_tokens_per_s": b * lp / step_s, "tflops_per_step": flops / 1e12,
           "achieved_tflops": flops / step_s / 1e12, "mfu": mfu(flops, step_s, 1, peak),
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0,
           "loss": vals["loss"]}
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def max_length(attention: str, b: int, lt: int, ls: int, ac: bool, device: torch.device,
               lengths=(512, 1024, 1536, 2048, 3072, 4096, 6144, 8192)) -> dict:
    """Longest protein length (from ``lengths``) whose full training step fits, one step each."""
    best, err = None, None
    for lp in lengths:
        try:
            run_steps(attention, b, lp, lt, ls, steps=1, warmup=0, ac=ac, device=device)
            best = lp
        except torch.OutOfMemoryError as e:
            err = str(e).splitlines()[0][:160]
            torch.cuda.empty_cache()
            break
    return {"attention": attention, "batch": b, "activation_checkpointing": ac, "max_protein_len": best,
            "first_oom": err}


def _versions() -> dict:
    import transformers

    try:
        import xformers
        xf = xformers.__version__
    except Exception:  # noqa: BLE001
        xf = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = "unknown"
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "xformers": xf, "python": platform.python_version(), "gpu": torch.cuda.get_device_name(0),
            "commit": commit, "date": datetime.date.today().isoformat()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (one GPU)")
    ap.add_argument("--length", type=int, default=512, help="protein tokens (incl. cls/eos)")
    ap.add_argument("--text-length", type=int, default=256)
    ap.add_argument("--subtext-length", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--attention", nargs="+", default=["sdpa", "xformers", "eager"])
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--skip-maxlen", action="store_true")
    ap.add_argument("--maxlen-batch", type=int, default=4)
    ap.add_argument("--out", type=str, default=None)
    ap.add_argument("--tiny-cpu-smoke", action="store_true",
                    help="check the script itself on a CPU: tiny towers, gloo, 2 steps (numbers meaningless)")
    args = ap.parse_args()
    if args.tiny_cpu_smoke:
        return _smoke()
    if not torch.cuda.is_available():
        print("gpu_mfu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from protclip.model.attention import xformers_available

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    backends = [a for a in args.attention if a != "xformers" or xformers_available()]
    results = {"versions": _versions(), "mfu": [], "max_length": []}
    for att in backends:
        r = run_steps(att, args.batch, args.length, args.text_length, args.subtext_length, args.steps,
                      args.warmup, args.activation_checkpointing, device)
        print(json.dumps(r), flush=True)
        results["mfu"].append(r)
    if not args.skip_maxlen:
        for att in backends:
            for ac in (False, True):
                r = max_length(att, args.maxlen_batch, args.text_length, args.subtext_length, ac, device)
                print(json.dumps(r), flush=True)
                results["max_length"].append(r)
    torch.distributed.destroy_process_group()
    md = _markdown(results, args)
    print(md)
    if args.out:
        Path(args.out).write_text(md)
    return 0


def _smoke() -> int:
    """Same code path on CPU with tiny towers (so a GPU box does not find trivial bugs first)."""
    ESM2_650M.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    PUBMEDBERT.update(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128)
    global random_batch
    full = random_batch

    def small_vocab(b, lp, lt, ls, device, seed=0):
        out = full(b, lp, lt, ls, device, seed)
        for k in ("text_input_ids", "subtext_input_ids"):
            out[k] = out[k] % 1000
        return out

    random_batch = small_vocab
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29534"))
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    r = run_steps("sdpa", 2, 64, 32, 16, steps=2, warmup=1, ac=True, device=torch.device("cpu"))
    torch.distributed.destroy_process_group()
    print(json.dumps(r))
    return 0


def _markdown(res: dict, args) -> str:
    v = res["versions"]
    lines = [f"# ProtCLIP step MFU, ESM-2 650M + PubMedBERT, bf16 FSDP2, 1x {v['gpu']} ({v['date']})", "",
             f"torch {v['torch']} (CUDA {v['cuda']}), transformers {v['transformers']}, xformers {v['xformers']}, "
             f"commit {v['commit']}. Command: `python benchmarks/gpu_mfu.py {' '.join(sys.argv[1:])}`", "",
             "All four objectives on (3 ESM passes with grad, frozen text + 4 sub-texts without), batch "
             f"{args.batch}, text {args.text_length}, sub-texts {args.subtext_length}; MFU = model FLOPs "
             "(protclip/train/flops.py, real tokens) / (median step time x peak).", "",
             "| attention | protein L | step (s) | pairs/s | TFLOP/s | MFU | peak mem (GiB) |", "|---|---|---|---|---|---|---|"]
    for r in res["mfu"]:
        m = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['attention']} | {r['protein_len']} | {r['step_s_median']:.3f} | {r['pairs_per_s']:.1f} | "
                     f"{r['achieved_tflops']:.1f} | {m} | {r['peak_mem_gib']:.1f} |")
    if res["max_length"]:
        lines += ["", f"Longest trainable protein length (batch {args.maxlen_batch}):", "",
                  "| attention | activation ckpt | max L | first OOM |", "|---|---|---|---|"]
        for r in res["max_length"]:
            lines.append(f"| {r['attention']} | {r['activation_checkpointing']} | {r['max_protein_len']} | "
                         f"{r['first_oom'] or '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
