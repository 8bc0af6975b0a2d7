"""Real ProtAnno rows and tiny models for the model tests (no Ray, no downloads)."""

from __future__ import annotations

import functools
import json
import warnings

import torch


@functools.lru_cache(maxsize=1)
def protanno_rows() -> tuple[dict, ...]:
    """The 103 real UniProt sample entries as ProtAnno rows, through the project's own parser.

    The parser is developed alongside; if it cannot run, the 10 real ProtCLIP sample pairs are used instead
    (with a warning), cut into properties at the headers as the released data is.
    """
    try:
        from protclip.data.schema import record_to_row
        from protclip.data.uniprot import parse_file
        from protclip.paths import uniprot_samples_dat

        report = parse_file(uniprot_samples_dat())
        assert not report.errors, report.errors[:3]
        return tuple(record_to_row(r) for r in report.records)
    except Exception as e:  # noqa: BLE001 - any parser failure: fall back, loudly
        warnings.warn(
            f"UniProt parser unavailable ({type(e).__name__}: {e}); using the jsonl sample rows", stacklevel=2
        )
        return jsonl_rows()


@functools.lru_cache(maxsize=1)
def jsonl_rows() -> tuple[dict, ...]:
    """The real ProtCLIP aligned-data sample pairs as rows (property offsets found at the headers)."""
    from protclip.data.collate import HEADERS, PROPERTIES
    from protclip.paths import shared_data_dir

    rows = []
    path = shared_data_dir() / "uniprot_samples" / "protclip_aligned_data_sample.jsonl"
    for i, line in enumerate(path.read_text().splitlines()):
        rec = json.loads(line)
        text = rec["text"]
        starts = sorted((text.find(HEADERS[p]), p) for p in PROPERTIES if text.find(HEADERS[p]) >= 0)
        offsets = [
            {"property": p, "start": s, "end": (starts[k + 1][0] - 1 if k + 1 < len(starts) else len(text))}
            for k, (s, p) in enumerate(starts)
        ]
        rows.append({"accession": f"SAMPLE{i}", "sequence": rec["seq"], "length": len(rec["seq"]), "text": text,
                     "property_offsets": offsets, "features": []})  # fmt: skip
    return tuple(rows)


def row_batch(n: int = 6, start: int = 0) -> list[dict]:
    """``n`` real rows, chosen to mix lengths (some longer than the tiny max length) and property counts."""
    rows = sorted(protanno_rows(), key=lambda r: r["accession"])
    return [dict(r) for r in rows[start : start + n]]


def tiny(mode: str = "paper", seed: int = 0, loss_cfg=None, **overrides):
    """(model, loss_fn, collator) on a tiny random-init config."""
    from protclip.data.collate import ProtCLIPCollator
    from protclip.model.config import LossConfig, tiny_model_config
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model

    mcfg = tiny_model_config(mode=mode, **overrides)
    lcfg = loss_cfg or LossConfig()
    torch.manual_seed(seed)
    return build_model(mcfg, lcfg), ProtCLIPLoss(lcfg, mcfg), ProtCLIPCollator(mcfg, lcfg, seed=seed)
