"""Predict with a fine-tuned adapter: ``python -m protclip.finetune.infer --adapter DIR --input F --output O``.

Loads the base tower recorded in the adapter (or ``--base``), a fresh task model and the adapter with
``PeftModel.from_pretrained`` (or a merged model with ``--model``), predicts on a FASTA / CSV / TSV / Parquet file
and writes CSV or Parquet (by the output's extension): one row per sequence with the prediction and its scores
(class probabilities ``p_<label>``; per-residue: 1-based predicted positions and per-residue scores).

Exit codes (one line on stderr): 0 ok; 1 failed on its input (a missing or unreadable adapter, an input record
that does not parse); 2 bad arguments (options that do not fit the file); 3 the input file does not exist.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protclip.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_STORAGE, run_main
from protclip.data.batching import length_batches
from protclip.data.formats import FormatError, clean_sequence, read_fasta, read_table_frame
from protclip.dist import resolve_device
from protclip.finetune.data import Collator
from protclip.finetune.evaluate import batch_outputs, prediction_rows
from protclip.finetune.model import TaskSpec, load_adapter, load_merged

_log = logging.getLogger(__name__)

FORMATS = ("auto", "fasta", "csv", "tsv", "parquet")


@dataclass(kw_only=True)
class PredictConfig:
    """What to predict with and on; each field is a flag (``batch_size`` -> ``--batch-size``)."""

    adapter: str | None = None  # adapter folder written by a LoRA job (<run>/export/adapter); or --model
    model: str | None = None  # merged model folder (<run>/export/merged); or --adapter
    base: str | None = None  # base tower folder or hub id; None = the one recorded in the adapter
    input: str  # FASTA, CSV, TSV or Parquet file with the sequences
    format: str = "auto"  # auto | fasta | csv | tsv | parquet; auto = by the input's file extension
    sequence_column: str = "sequence"  # table column with the sequences
    id_column: str = "id"  # table column with the ids (row<N> when absent); FASTA: the header's first word
    output: str  # predictions file: .csv, .tsv or .parquet
    batch_size: int = 16  # sequences per forward pass
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...


def _parser() -> argparse.ArgumentParser:
    """The flags of :class:`PredictConfig`. No defaults here (None = not given): they live in the dataclass,
    which ``--help`` reads without importing this module."""
    ap = argparse.ArgumentParser(prog="jobs/predict_lora.py", add_help=False)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--adapter")
    src.add_argument("--model")
    ap.add_argument("--base")
    ap.add_argument("--input", required=True)
    ap.add_argument("--format", choices=FORMATS)
    ap.add_argument("--sequence-column")
    ap.add_argument("--id-column")
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--device")
    return ap


def parse_args(argv: list[str]) -> PredictConfig:
    return PredictConfig(**{k: v for k, v in vars(_parser().parse_args(argv)).items() if v is not None})


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
    """Exit codes as ``jobs/predict_lora.py`` documents them; a missing input file is 3 (README table)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        from protclip.help import options_help

        print(options_help("protclip.finetune.infer", "PredictConfig"))
        return 0
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    src = Path(args.input)
    if not src.is_file():
        print(f"storage error: --input {src.resolve()}: {'not a file' if src.exists() else 'no such file'}",
              file=sys.stderr)
        return EXIT_STORAGE
    try:
        ids, seqs = read_inputs(src, args.format, args.sequence_column, args.id_column)
    except FormatError as e:  # the file is there but a record is bad: the job failed on its input
        print(f"input error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:  # the options do not fit the file (format, column names)
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
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
    raise SystemExit(run_main(main, help_passthrough=True))
