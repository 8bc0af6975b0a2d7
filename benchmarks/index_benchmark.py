"""Query latency (ms/query) and recall@10 of exact vs approximate FAISS indexes at the defaults of
``protclip.search.index.IndexParams``, on synthetic unit vectors of the model's dimension (clustered like
embeddings: 1,000 centres + unit noise), at 100k and 1M vectors.

    .venv/bin/python benchmarks/index_benchmark.py [--sizes 100000 1000000] [--dim 512] [--types flat ivf hnsw]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(1234).standard_normal((1000, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 100_000):  # in chunks: 1M x 512 float64 noise would need 4 GB at once
        m = min(100_000, n - i)
        x = centres[rng.integers(0, 1000, m)] + rng.standard_normal((m, dim), dtype=np.float32)
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> int:
    import faiss

    from protclip.search.index import IndexParams, build_index

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--types", nargs="+", default=["flat", "ivf", "hnsw"])
    ap.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this size (build time)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", default=f"benchmarks/results/index_cpu_{time.strftime('%Y%m')}.md")
    args = ap.parse_args()
    q = vectors(args.queries, args.dim, 1)
    rows = []
    for n in args.sizes:
        x = vectors(n, args.dim, 0)
        truth = None
        for kind in args.types:
            if kind == "hnsw" and n > args.hnsw_max:
                rows.append(f"| {n:,} | hnsw | not run (build time on this machine; see text) | | | |")
                continue
            t0 = time.perf_counter()
            index, _, params = build_index(x, IndexParams(type=kind))
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, found = index.search(q, 10)
            ms = (time.perf_counter() - t0) * 1000 / len(q)
            if kind == "flat":
                truth = found
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
            rows.append(f"| {n:,} | {kind} | {params or '-'} | {build:.1f} | {ms:.3f} | {recall:.4f} |")
            print(rows[-1], flush=True)
            del index
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    text = [
        f"# FAISS index: exact vs approximate, {args.dim}-d synthetic unit vectors",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (FAISS threads "
        f"{faiss.omp_get_max_threads()}), {platform.platform()}; python {sys.version.split()[0]}, faiss "
        f"{faiss.__version__}, numpy {np.__version__}; commit {commit}. {args.queries} queries, batched; recall@10 "
        "against the exact index.",
        "",
        "| vectors | index | parameters | build s | ms/query | recall@10 |",
        "|---:|---|---|---:|---:|---:|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
