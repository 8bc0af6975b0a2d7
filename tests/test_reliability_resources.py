"""Reliability: resources (docs/reliability.md §3). No Ray.

The memory of a training step is bounded by the config, never by the data: every protein is cropped to
``max_protein_length`` tokens (a random contiguous window in training, the first window in evaluation), texts to
``max_text_length`` / ``max_subtext_length``, and every micro-batch has exactly ``micro_batch_size`` rows. So a
100k-residue protein or a window full of them gives the same tensor shapes as ordinary rows, and a model step on
the worst case (every row at the cap) runs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from protclip.data.config import DataConfig
from protclip.data.pipeline import make_collator, required_columns
from protclip.data.schema import record_to_row, rows_to_table
from protclip.data.stages import collate_windows
from protclip.data.tokenizers import ProteinTokenizer
from protclip.data.uniprot import parse_file
from protclip.model.config import collate_config, tiny_model_config

AA = "ACDEFGHIKLMNPQRSTVWY"
GIANT = 100_000
MAXP, MAXT, MAXS, MBS = 130, 128, 64, 4


@pytest.fixture(scope="module")
def rows(uniprot_dat) -> list[dict]:
    """The real samples; every 4th one turned into a 100k-residue protein with a 200k-character text."""
    rng = np.random.default_rng(0)
    out = [record_to_row(r) for r in parse_file(uniprot_dat).records[:48]]
    for r in out[::4]:
        r["sequence"] = "".join(rng.choice(list(AA), size=GIANT))
        r["length"] = GIANT
        r["text"] = r["text"] + " " + "lorem ipsum " * 16_000  # offsets stay valid: appended after the properties
    return out


def _cfg() -> DataConfig:
    return DataConfig(uri="unused", micro_batch_size=MBS, bucket_window=16, shuffle_buffer=32,
                      max_protein_length=MAXP, max_text_length=MAXT, max_subtext_length=MAXS)


def _collator(train: bool = True):
    return make_collator(_cfg(), collate_config(tiny_model_config(), data_cfg=_cfg()), train=train)


def test_giant_rows_are_cropped_to_the_token_budget(rows):
    """The Ray Data collate stage on a window holding 12 giant rows: every micro-batch stays within
    micro_batch_size x max_protein_length protein tokens (and the text caps); nothing is dropped for length."""
    coll = _collator()
    t = rows_to_table(rows).select(list(dict.fromkeys(required_columns(coll) + ["length"])))
    t = t.append_column("epoch", pa.array(np.zeros(t.num_rows, dtype=np.int64)))
    out = collate_windows(t, collator=coll, micro_batch_size=MBS, bucket_window=16, max_protein_length=MAXP,
                          seed=0, deterministic=False)
    assert len(out["protein_input_ids"]) == len(rows) // MBS  # every row went into a micro-batch
    for i, ids in enumerate(out["protein_input_ids"]):
        assert ids.shape[0] == MBS and ids.shape[1] <= MAXP
        assert out["n_real_tokens"][i] + out["n_padded_tokens"][i] <= MBS * MAXP
        assert out["text_input_ids"][i].shape[1] <= MAXT
        assert out["subtext_input_ids"][i].shape[1:] == (4, out["subtext_input_ids"][i].shape[2])
        assert out["subtext_input_ids"][i].shape[2] <= MAXS
    giant_batches = [i for i, ids in enumerate(out["protein_input_ids"]) if ids.shape[1] == MAXP]
    assert giant_batches, "the giant rows were bucketed together at the cap"


@pytest.mark.parametrize("train", [True, False], ids=["train-random-window", "eval-first-window"])
def test_crop_is_a_contiguous_window_of_the_real_sequence(rows, train):
    coll = _collator(train)
    batch = coll(rows[:MBS], seed=123)
    ids = np.asarray(batch["protein_input_ids"])
    assert ids.shape == (MBS, MAXP)
    tok = ProteinTokenizer()
    crop = tok.decode(ids[0])
    assert len(crop) == MAXP - 2 and crop in rows[0]["sequence"]
    if not train:
        assert rows[0]["sequence"].startswith(crop)


def test_batch_shape_does_not_grow_with_sequence_length(rows):
    """Memory per step is set by the config: 4 giant rows collate to the same shapes as 4 rows at the cap."""
    coll = _collator()
    giant = coll(rows[0:16:4], seed=1)
    at_cap = coll([dict(r, sequence=r["sequence"][: MAXP - 2], length=MAXP - 2) for r in rows[0:16:4]], seed=1)
    assert {k: np.asarray(v).shape for k, v in giant.items()} == {k: np.asarray(v).shape for k, v in at_cap.items()}


def test_model_step_on_the_worst_case_micro_batch(rows):
    """Every row at the length cap (the most memory a micro-batch can take): forward + backward run, loss finite."""
    from protclip.model.config import LossConfig
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model
    from protclip.train.step import forward_backward

    mcfg, lcfg = tiny_model_config(), LossConfig()
    torch.manual_seed(0)
    model = build_model(mcfg, lcfg)
    model.train()
    coll = make_collator(_cfg(), collate_config(mcfg, lcfg, data_cfg=_cfg()))
    coll.as_numpy = False
    mb = coll(rows[0:16:4], seed=7)
    assert mb["protein_input_ids"].shape == (MBS, MAXP) and bool(mb["protein_attention_mask"].all())
    terms = forward_backward(model, ProtCLIPLoss(lcfg, mcfg), [mb])
    assert np.isfinite(terms.values["loss"])
    assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
