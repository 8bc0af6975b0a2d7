"""Predict with a fine-tuned adapter: ``python -m protclip.finetune.infer --adapter DIR --input F --output O``.

Loads the base tower recorded in the adapter (or ``--base``), a fresh task model and the adapter with
``PeftModel.from_pretrained`` (or a merged model with ``--model``), predicts on a FASTA / CSV / TSV / Parquet file
and writes CSV or Parquet (by the output's extension): one row per sequence with the prediction and its scores
(class probabilities ``p_<label>``; per-residue: 1-based predicted positions and per-residue scores).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protclip.data.batching import length_batches
from protclip.data.formats import FormatError, clean_sequence, read_fasta, read_table_frame
from protclip.dist import resolve_device
from protclip.finetune.data import Collator
from protclip.finetune.evaluate import batch_outputs, prediction_rows
from protclip.finetune.model import TaskSpec, load_adapter, load_merged

_log = logging.getLogger(__name__)


def read_inputs(path: str | Path, fmt: str = "auto", sequence_column: str = "sequence",
                id_column: str | None = "id") -> tuple[list[str], list[str]]:
    """(ids, sequences) from FASTA (id = first header word) or a table; bad sequences raise FormatError."""
    path = Path(path)
    if fmt == "fasta" or (fmt == "auto" and path.suffix.lower() in (".fasta", ".fa", ".faa")):
        recs = read_fasta(path)
        return [r.id for r in recs], [clean_sequence(r.sequence, path, f"line {r.line} ({r.id})") for r in recs]
    df = read_table_frame(path, "auto" if fmt == "auto" else fmt, (sequence_column,))
    use_id = id_column if id_column and id_column in df.columns else None
    ids = [str(v) for v in df[use_id]] if use_id else [f"row{i + 1}" for i in range(len(df))]
    seqs = [clean_sequence(s, path, f"row {i + 1}", sequence_column) for i, s in enumerate(df[sequence_column])]
    return ids, seqs


@torch.no_grad()
def predict(model: torch.nn.Module, spec: TaskSpec, ids: list[str], sequences: list[str], *,
            batch_size: int = 16, device: str = "auto") -> list[dict[str, Any]]:
    """Prediction rows (see :func:`protclip.finetune.evaluate.prediction_rows`) in input order."""
    dev = resolve_device(device)
    model.to(dev).eval()
    collate = Collator(spec.type, spec.num_outputs, spec.max_length, spec.crop, spec.target_mean, spec.target_std)
    lengths = [min(len(s), spec.max_length - 2) for s in sequences]
    outputs: list[Any] = [None] * len(sequences)
    for batch in length_batches(lengths, batch_size):
        b = collate([sequences[i] for i in batch])
        logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
        for i, o in zip(batch, batch_outputs(logits.cpu(), b["attention_mask"], spec), strict=True):
            outputs[i] = o
    kept = [collate.kept(s) for s in sequences] if spec.type == "per_residue" else None
    return prediction_rows(spec, ids, outputs, kept)


def write_rows(rows: list[dict[str, Any]], output: str | Path) -> Path:
    import pandas as pd

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if output.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(output, index=False)
    elif output.suffix.lower() in (".csv", ".tsv"):
        df.to_csv(output, index=False, sep="," if output.suffix.lower() == ".csv" else "\t")
    else:
        raise ValueError(f"--output {output}: use a .csv, .tsv or .parquet file name")
    return output


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--adapter", help="adapter folder written by a LoRA job (<run>/export/adapter)")
    src.add_argument("--model", help="merged model folder (<run>/export/merged)")
    ap.add_argument("--base", help="base tower folder or hub id (default: the one recorded in the adapter)")
    ap.add_argument("--input", required=True, help="FASTA, CSV, TSV or Parquet with sequences")
    ap.add_argument("--format", default="auto", choices=["auto", "fasta", "csv", "tsv", "parquet"])
    ap.add_argument("--sequence-column", default="sequence")
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--output", required=True, help="predictions file (.csv, .tsv or .parquet)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ids, seqs = read_inputs(args.input, args.format, args.sequence_column, args.id_column)
    except (FormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.adapter:
        model, spec = load_adapter(args.adapter, args.base)
    else:
        model, spec = load_merged(args.model)
    rows = predict(model, spec, ids, seqs, batch_size=args.batch_size, device=args.device)
    out = write_rows(rows, args.output)
    _log.info("%d predictions written to %s", len(rows), out)
    if spec.type == "single_label":
        labels, counts = np.unique([r["prediction"] for r in rows], return_counts=True)
        _log.info("predicted classes: %s", dict(zip(labels.tolist(), counts.tolist(), strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
