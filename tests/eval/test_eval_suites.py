"""Eval suites end to end on synthetic data with embedders whose behaviour is known, plus the registry."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from protclip.data.alphabet import AA_INDEX, AMINO_ACIDS
from protclip.data.formats import read_deeploc_fasta
from protclip.eval.embedder import Embedder
from protclip.eval.suites import SUITES, SuiteResult, make_config, run_suite
from protclip.eval.suites.mutation import score_variants
from protclip.eval.suites.zero_shot import DEEPLOC_CLASS_NAMES, DEFAULT_LOCATION_TEMPLATES, class_prompts
from protclip.paths import shared_data_dir
from tests.helpers.tiny_esm import tiny_esm_embedder
from tests.helpers.tolerance import approx_rounding, assert_close_rounding

DEEPLOC = shared_data_dir() / "benchmarks" / "deeploc1_la" / "deeploc_test_set.fasta"


class TableEmbedder:
    """Looks embeddings up: proteins by sequence, texts through a function."""

    def __init__(self, prot: dict[str, np.ndarray], text=None) -> None:
        self.prot, self.text = prot, text

    def embed_proteins(self, sequences: list[str], batch_size: int) -> np.ndarray:
        return np.stack([self.prot[s] for s in sequences]).astype(np.float32)

    def embed_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.stack([self.text(t) for t in texts]).astype(np.float32)

    def mlm_log_probs(self, sequence: str, positions: list[int]) -> np.ndarray:
        raise NotImplementedError


def random_sequences(n: int, rng: np.random.Generator, length: int = 30) -> list[str]:
    return ["".join(rng.choice(list(AMINO_ACIDS), size=length)) for _ in range(n)]


def check_figures(result: SuiteResult, names: set[str]) -> None:
    assert set(result.figures) == names
    for fig in result.figures.values():
        assert isinstance(fig, Figure)
        fig.savefig(io.BytesIO(), format="png")


# ---------------------------------------------------------------- retrieval


def _retrieval_file(tmp_path, n=30, seed=0):
    rng = np.random.default_rng(seed)
    seqs = random_sequences(n, rng)
    texts = [f"PROTEIN NAME: protein {i}. FUNCTION: does thing {i}." for i in range(n)]
    texts[5] = texts[6] = "PROTEIN NAME: Uncharacterized protein."  # identical texts happen in ProtAnno
    path = tmp_path / "heldout.parquet"
    pd.DataFrame({"accession": [f"A{i}" for i in range(n)], "sequence": seqs, "text": texts}).to_parquet(path)
    return path, seqs, texts, rng


def test_retrieval_matched_embeddings_are_perfect(tmp_path):
    path, seqs, texts, rng = _retrieval_file(tmp_path)
    vec = {s: rng.normal(size=16) for s in seqs}
    vec[seqs[6]] = vec[seqs[5]] + 0.01 * rng.normal(
        size=16
    )  # one text, two proteins: a perfect model puts them together
    by_text = {}
    for s, t in zip(seqs, texts, strict=False):
        by_text.setdefault(t, vec[s] + 0.01 * rng.normal(size=16))
    emb = TableEmbedder(vec, lambda t: by_text[t])
    assert isinstance(emb, Embedder)
    res = run_suite("retrieval", {"path": str(path), "heatmap_size": 8}, emb)
    for direction in ("p2t", "t2p"):
        for k in ("r1", "r5", "r10", "mrr"):
            assert res.metrics[f"{direction}_{k}"] == 1.0
    assert res.n_examples == 30 and res.info["n_unique_texts"] == 29
    check_figures(res, {"similarity"})


def test_retrieval_unrelated_embeddings_near_chance(tmp_path):
    path, seqs, _, rng = _retrieval_file(tmp_path, n=40)
    vec = {s: rng.normal(size=16) for s in seqs}
    text_vec: dict[str, np.ndarray] = {}
    emb = TableEmbedder(vec, lambda t: text_vec.setdefault(t, rng.normal(size=16)))
    res = run_suite("retrieval", {"path": str(path), "max_examples": 25, "make_figures": False}, emb)
    assert res.n_examples == 25 and res.figures == {}
    assert res.metrics["p2t_r1"] < 0.25 and res.metrics["t2p_mrr"] < 0.4


# ---------------------------------------------------------------- zero-shot


def _class_of_prompt(prompt: str) -> str:
    """The DeepLoc class whose longest name occurs in the prompt."""
    hits = [(len(n), c) for c, names in DEEPLOC_CLASS_NAMES.items() for n in names if n in prompt]
    return max(hits)[1]


def test_zero_shot_on_real_deeploc_with_an_oracle_embedder():
    data = read_deeploc_fasta(DEEPLOC)
    classes = sorted(DEEPLOC_CLASS_NAMES)
    onehot = {c: np.eye(len(classes))[i] for i, c in enumerate(classes)}
    prot = {s: onehot[y] for s, y in zip(data.sequences, data.labels, strict=False)}
    emb = TableEmbedder(prot, lambda t: onehot[_class_of_prompt(t)])
    res = run_suite("zero_shot", {"path": str(DEEPLOC), "format": "deeploc", "max_examples": 300}, emb)
    assert res.metrics["acc"] == 1.0 and res.metrics["f1_macro"] == 1.0
    assert 0.2 < res.metrics["majority_acc"] < 0.4 and res.n_examples == 300
    assert res.info["n_classes"] == 10
    check_figures(res, {"confusion"})


def test_zero_shot_default_deeploc_prompts():
    prompts = class_prompts(sorted(DEEPLOC_CLASS_NAMES), DEFAULT_LOCATION_TEMPLATES, None)
    assert len(prompts) == 10
    assert "SUBCELLULAR LOCATION: Secreted." in prompts["Extracellular"]
    assert {"SUBCELLULAR LOCATION: Lysosome.", "SUBCELLULAR LOCATION: Vacuole."} <= set(
        prompts["Lysosome/Vacuole"]
    )
    custom = class_prompts(["a", "b"], ["is {name}"], {"a": ["alpha"]})
    assert custom == {"a": ["is alpha"], "b": ["is b"]}


# ---------------------------------------------------------------- linear probe and fine-tune head


def _synthetic_task(tmp_path, task_type: str, n=240, seed=0):
    """A table whose embeddings carry the label (plus noise), and the matching embedder."""
    rng = np.random.default_rng(seed)
    seqs = random_sequences(n, rng)
    centers = rng.normal(size=(4, 12)) * 3
    if task_type == "single_label":
        cls = rng.integers(0, 4, n)
        labels = [f"c{k}" for k in cls]
        x = centers[cls] + rng.normal(size=(n, 12))
    elif task_type == "multi_label":
        y = rng.random((n, 4)) < 0.35
        labels = [";".join(f"L{j}" for j in np.flatnonzero(r)) for r in y]
        x = y @ centers + 0.5 * rng.normal(size=(n, 12))
    else:
        x = rng.normal(size=(n, 12))
        labels = (x @ rng.normal(size=12) + 0.2 * rng.normal(size=n)).tolist()
    path = tmp_path / f"{task_type}.csv"
    pd.DataFrame({"id": [f"P{i}" for i in range(n)], "sequence": seqs, "label": labels}).to_csv(
        path, index=False
    )
    return str(path), TableEmbedder(dict(zip(seqs, x, strict=False)))


def test_linear_probe_single_label(tmp_path):
    path, emb = _synthetic_task(tmp_path, "single_label")
    res = run_suite("linear_probe", {"path": path, "id_column": "id"}, emb)
    assert res.metrics["acc"] > 0.9 and res.metrics["majority_acc"] < 0.45
    assert res.info["n_train"] + res.info["n_test"] == 240 and res.n_examples == res.info["n_test"]
    check_figures(res, {"confusion"})


def test_linear_probe_multi_label(tmp_path):
    path, emb = _synthetic_task(tmp_path, "multi_label")
    res = run_suite("linear_probe", {"path": path, "task_type": "multi_label", "id_column": "id"}, emb)
    assert res.metrics["fmax"] > 0.85 and res.metrics["aupr_micro"] > 0.85
    check_figures(res, {"pr_curve"})


def test_linear_probe_regression(tmp_path):
    path, emb = _synthetic_task(tmp_path, "regression")
    res = run_suite("linear_probe", {"path": path, "task_type": "regression", "test_fraction": 0.3}, emb)
    assert res.metrics["spearman"] > 0.95 and res.metrics["rmse"] >= res.metrics["mae"] > 0
    check_figures(res, {"scatter"})


@pytest.mark.parametrize("task_type", ["single_label", "multi_label", "regression"])
def test_finetune_head_frozen(tmp_path, task_type):
    path, emb = _synthetic_task(tmp_path, task_type)
    cfg = {
        "path": path,
        "task_type": task_type,
        "epochs": 40,
        "hidden_dim": 64,
        "lr": 3e-3,
        "make_figures": False,
    }
    res = run_suite("finetune_head", cfg, emb)
    key, floor = {
        "single_label": ("acc", 0.85),
        "multi_label": ("fmax", 0.8),
        "regression": ("spearman", 0.85),
    }[task_type]
    assert res.metrics[key] > floor, res.metrics
    assert res.info["n_valid"] > 0 and res.info["n_fit"] + res.info["n_valid"] == res.info["n_train"]


def test_finetune_head_partial_trains_a_copy_of_the_tower(tmp_path):
    rng = np.random.default_rng(0)
    # class = which residue dominates the sequence: learnable from mean-pooled residues
    seqs, labels = [], []
    for i in range(80):
        rich = "K" if i % 2 else "E"
        seqs.append("".join(rng.choice([rich, *AMINO_ACIDS], size=24, p=[0.5] + [0.025] * 20)))
        labels.append("basic" if rich == "K" else "acidic")
    path = tmp_path / "comp.csv"
    pd.DataFrame({"sequence": seqs, "label": labels}).to_csv(path, index=False)
    emb = tiny_esm_embedder(seed=1)
    before = {k: v.clone() for k, v in emb.model.state_dict().items()}
    cfg = {
        "path": str(path),
        "mode": "partial",
        "unfreeze_layers": 1,
        "epochs": 10,
        "hidden_dim": 32,
        "lr": 3e-3,
        "valid_fraction": 0.2,
        "make_figures": False,
    }
    res = run_suite("finetune_head", cfg, emb)
    assert res.metrics["acc"] >= 0.8, res.metrics
    after = emb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's tower is untouched
    with pytest.raises(ValueError, match="exposing its HF tower"):
        run_suite("finetune_head", cfg, TableEmbedder({s: np.zeros(3) for s in seqs}))


# ---------------------------------------------------------------- mutation


class KnownMLM:
    """log p(aa at position p) = log_softmax(theta[p]) whatever is masked; records the masking patterns."""

    def __init__(self, length: int, seed: int = 0) -> None:
        theta = np.random.default_rng(seed).normal(size=(length, 20))
        self.logp = theta - np.log(np.exp(theta).sum(1, keepdims=True))
        self.calls: list[tuple[int, ...]] = []

    def embed_proteins(self, sequences, batch_size):
        raise NotImplementedError

    def embed_texts(self, texts, batch_size):
        raise NotImplementedError

    def mlm_log_probs(self, sequence: str, positions: list[int]) -> np.ndarray:
        self.calls.append(tuple(positions))
        return self.logp[positions]


def test_mutation_suite_known_log_probs(tmp_path):
    rng = np.random.default_rng(0)
    wt = "".join(rng.choice(list(AMINO_ACIDS), size=40))
    mutants = []
    for p in rng.choice(40, size=15, replace=False):
        mt = next(a for a in AMINO_ACIDS if a != wt[p])
        mutants.append(f"{wt[p]}{p + 1}{mt}")
    mutants += [f"{mutants[0]}:{mutants[1]}", f"{mutants[2]}:{mutants[3]}"]
    mlm = KnownMLM(len(wt))

    def expected(m: str) -> float:
        total = 0.0
        for part in m.split(":"):
            p = int(part[1:-1]) - 1
            total += mlm.logp[p, AA_INDEX[part[-1]]] - mlm.logp[p, AA_INDEX[part[0]]]
        return total

    want = np.array([expected(m) for m in mutants])
    path = tmp_path / "dms.csv"
    pd.DataFrame({"mutant": mutants, "score": 3 * want + 1}).to_csv(path, index=False)
    res = run_suite("mutation", {"path": str(path), "wt_sequence": wt}, mlm)
    assert res.metrics["spearman"] == approx_rounding(1.0)
    assert res.n_examples == 17 and res.info["n_multi_mutants"] == 2
    check_figures(res, {"scatter"})
    # one pass per distinct masking pattern; double mutants mask both positions together
    assert len(mlm.calls) == 17 and len(set(mlm.calls)) == 17
    p0, p1 = int(mutants[0][1:-1]) - 1, int(mutants[1][1:-1]) - 1
    assert tuple(sorted((p0, p1))) in mlm.calls

    from protclip.data.formats import read_mutations

    scores = score_variants(mlm, read_mutations(path, wt_sequence=wt))
    # float64 sums of log-prob differences: rounding relative to the log-probs, not to the (small) scores
    assert_close_rounding(scores, want, scale=float(np.abs(mlm.logp).max()), msg="variant scores")


# ---------------------------------------------------------------- PPI


def test_ppi_pair_classifier(tmp_path):
    rng = np.random.default_rng(0)
    seqs = random_sequences(60, rng)
    family = rng.integers(0, 6, 60)
    centers = rng.normal(size=(6, 16)) * 2
    vec = {s: centers[f] + 0.3 * rng.normal(size=16) for s, f in zip(seqs, family, strict=False)}
    rows = []
    for _ in range(400):
        a, b = rng.choice(60, size=2, replace=False)
        rows.append((f"P{a}", f"P{b}", int(family[a] == family[b])))
    for a in range(60):  # enough positives
        b = next(j for j in range(60) if j != a and family[j] == family[a])
        rows.append((f"P{a}", f"P{b}", 1))
    pairs = tmp_path / "pairs.tsv"
    pd.DataFrame(rows, columns=["id_a", "id_b", "label"]).to_csv(pairs, sep="\t", index=False)
    seq_map = tmp_path / "seqs.tsv"
    seq_map.write_text("".join(f"P{i}\t{s}\n" for i, s in enumerate(seqs)))
    res = run_suite("ppi", {"path": str(pairs), "sequences_path": str(seq_map)}, TableEmbedder(vec))
    assert res.metrics["f1"] > 0.9 and res.metrics["acc"] > 0.9
    assert 0 < res.metrics["positive_rate"] < 1


# ---------------------------------------------------------------- registry and configs


def test_registry_and_config_validation(tmp_path):
    assert set(SUITES) == {"retrieval", "zero_shot", "linear_probe", "finetune_head", "mutation", "ppi"}
    cfg = make_config("linear_probe", {"path": "x.fasta", "format": "deeploc", "C": 0.5})
    assert cfg.C == 0.5 and make_config("linear_probe", cfg) is cfg
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\]"):
        make_config("linear_probe", {"path": "x", "lr": 1})
    with pytest.raises(ValueError, match="unknown eval suite"):
        make_config("nope", {})
    with pytest.raises(TypeError, match="takes LinearProbeConfig"):
        make_config("linear_probe", make_config("ppi", {"path": "x"}))
    bad = [
        ("linear_probe", {"path": "x", "task_type": "ordinal"}),
        ("linear_probe", {"path": "x", "split": "files"}),
        ("linear_probe", {"path": "x", "test_fraction": 1.0}),
        ("linear_probe", {}),
        ("zero_shot", {"path": "x", "templates": ["no placeholder"]}),
        ("mutation", {"path": "x", "wt_sequence": "MK", "wt_column": "wt"}),
        ("finetune_head", {"path": "x", "mode": "full"}),
        ("retrieval", {"path": "x", "batch_size": 0}),
        ("ppi", {"path": "x", "split": "column"}),
    ]
    for name, values in bad:
        with pytest.raises(ValueError):
            make_config(name, values)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_suite("linear_probe", {"path": str(tmp_path / "missing.csv")}, TableEmbedder({}))
