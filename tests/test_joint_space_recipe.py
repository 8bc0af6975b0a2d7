"""The ten-line plain-Python recipe of docs/joint_space.md gives the model's own joint-space vectors.

The code block is read from the document and run as written (only the export path is replaced), so the
document cannot drift from what ``model_from_export(...).encode_protein`` / ``encode_text`` compute.
"""

from __future__ import annotations

import re

import torch

from protclip.paths import REPO_ROOT
from tests.helpers.tolerance import assert_close_rounding

DOC = REPO_ROOT / "docs" / "joint_space.md"


def _recipe() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return next(b for b in blocks if "heads.safetensors" in b)


def test_plain_python_recipe_equals_model_from_export(tmp_path, capsys):
    from protclip.model.protclip import export_towers
    from protclip.pretrained import model_from_export
    from tests.helpers.model import tiny

    model, _, _ = tiny(mode="paper", seed=3)
    with torch.no_grad():  # non-zero biases: a recipe that dropped one would still pass with zeros
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1)
    export = tmp_path / "export"
    export_towers(model, export)

    code = _recipe().replace('EXPORT = "runs/real_small/export"', f'EXPORT = "{export}"')
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - the documented recipe, run as a user would
    assert "pooler" not in capsys.readouterr().err.lower()

    loaded = model_from_export(export)
    for tower, inputs, proj, residues_only, encode in [
        ("protein", ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNELLKEIAELRERIEQL"], "protein_proj", True, loaded.encode_protein),
        ("text", ["FUNCTION: Binds ATP.", "SUBCELLULAR LOCATION: Nucleus."], "text_proj", False, loaded.encode_text),
    ]:
        from transformers import AutoTokenizer

        got = scope["embed"](tower, inputs, proj, residues_only)
        batch = AutoTokenizer.from_pretrained(export / tower)(inputs, return_tensors="pt", padding=True)
        with torch.no_grad():
            want = encode(batch["input_ids"], batch["attention_mask"])
        assert got.shape == want.shape == (2, loaded.cfg.projection_dim)
        assert_close_rounding(got, want)
        assert not torch.allclose(got[0], got[1])  # two inputs, two different vectors
        example = scope["proteins"] if tower == "protein" else scope["texts"]
        assert_close_rounding(example, want)  # the document's own example calls are the right ones
    sims = scope["proteins"] @ scope["texts"].T
    assert sims.shape == (2, 2) and bool((sims.abs() <= 1 + 1e-6).all())
