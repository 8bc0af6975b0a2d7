"""``python -m protclip search``: query an index from the command line.

    python -m protclip search --index URI --text "ATP-dependent DNA helicase" [-k 10] [--format json|tsv]
    python -m protclip search --index URI_OF_A_TEXT_INDEX --fasta proteins.fasta [-k 5]

``--text`` (repeatable) ranks the proteins of a protein index; ``--fasta`` gives each protein its top-k texts from
a text index (zero-shot annotation). The model is the one the index records unless ``--export``,
``--checkpoint`` or ``--mlflow-run-id`` names another (which must then be the same weights). JSON (default) or
TSV (query, rank, id, score, description) on stdout.

Exit codes: 0 ok; 1 failed (missing file, unreadable input); 2 bad arguments; 3 storage error;
4 the index and the model do not match (dimension or weight checksum).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from protclip.cli import EXIT_CONFIG, EXIT_FAILED, run_main, setup_logging
from protclip.config import ConfigError
from protclip.search.identity import IndexModelMismatch
from protclip.storage import redact

__all__ = ["main", "search_main", "search_help", "SearchConfig", "EXIT_MISMATCH"]

EXIT_MISMATCH = 4


@dataclass(kw_only=True)
class SearchConfig:
    """The query, the index and the model; each field is a flag (``batch_size`` -> ``--batch-size``)."""

    index: str  # index folder (path or URI) written by jobs/index.py
    text: list[str] | None = None  # a function text to rank the proteins of a protein index by (repeat the flag)
    fasta: str | None = None  # proteins to annotate (path or URI) from a text index; or --text
    k: int = 10  # hits per query
    format: str = "json"  # json | tsv (query, rank, id, score, description) on stdout
    export: str | None = None  # model export folder; None = the model the index records
    checkpoint: str | None = None  # model checkpoint folder (instead of --export)
    mlflow_run_id: str | None = None  # pre-training MLflow run whose model to use (instead of --export)
    model_config: str | None = None  # run config describing a checkpoint's architecture
    tracking_uri: str | None = None  # MLflow tracking URI (for --mlflow-run-id)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    batch_size: int = 16  # queries embedded per forward pass


def search_help() -> str:
    """``--help``, read from the source of :class:`SearchConfig`. ``python -m protclip search --help`` prints
    the same text without importing this package (its ``__init__`` imports torch)."""
    from protclip.help import options_help

    return options_help("protclip.search.cli", "SearchConfig")


def _parser() -> argparse.ArgumentParser:
    """The flags of :class:`SearchConfig`. No defaults here (None = not given): they live in the dataclass."""
    p = argparse.ArgumentParser(prog="python -m protclip search", add_help=False)
    p.add_argument("--index", required=True)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", action="append")
    q.add_argument("--fasta")
    p.add_argument("-k", type=int)
    p.add_argument("--format", choices=("json", "tsv"))
    m = p.add_mutually_exclusive_group()
    m.add_argument("--export")
    m.add_argument("--checkpoint")
    m.add_argument("--mlflow-run-id")
    p.add_argument("--model-config")
    p.add_argument("--tracking-uri")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    return p


def parse_args(argv: list[str]) -> SearchConfig:
    return SearchConfig(**{k: v for k, v in vars(_parser().parse_args(argv)).items() if v is not None})


def _tsv_cell(v: object) -> str:
    return "" if v is None else str(v).replace("\t", " ").replace("\n", " ")


def search_main(argv: list[str]) -> int:
    """Query a protein index by text, or annotate proteins from a text index (see the module docstring).

    usage: python -m protclip search --index URI (--text T [--text T2 ...] | --fasta FILE) [-k 10]
    [--format json|tsv] [--export DIR | --checkpoint DIR | --mlflow-run-id ID]
    (exit 1 = failed, 2 = bad arguments, 3 = storage error, 4 = index and model do not match)
    """
    from protclip.eval.config import ModelSourceConfig
    from protclip.search.api import Searcher

    setup_logging()
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse already printed the one-line reason
        raise ConfigError("bad arguments to `python -m protclip search`") from e
    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    source = None
    if args.export or args.checkpoint or args.mlflow_run_id:
        source = ModelSourceConfig(export=args.export, checkpoint=args.checkpoint,
                                   mlflow_run_id=args.mlflow_run_id, model_config=args.model_config)  # fmt: skip
    try:
        s = Searcher(args.index, source=source, tracking_uri=args.tracking_uri, device=args.device,
                     batch_size=args.batch_size)  # fmt: skip
        if args.text:
            results = s.search_text(args.text, args.k)
        else:
            results, errors = s.annotate_fasta(args.fasta, args.k)
            for err in errors:
                print(f"skipped malformed record: {err}", file=sys.stderr)
    except IndexModelMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_MISMATCH
    except ConfigError:
        raise
    except ValueError as e:  # bad input (message names file, record and field) or the wrong kind of index
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "json":
        print(json.dumps([{"query": r.query, "hits": r.hits} for r in results], indent=1))
    else:
        print("query\trank\tid\tscore\tdescription")
        for r in results:
            for h in r.hits:
                print("\t".join(_tsv_cell(v) for v in (r.query, h["rank"], h["id"], f"{h['score']:.6f}",
                                                       h["description"])))  # fmt: skip
    return 0


COMMANDS = {"search": search_main}


def main(argv: list[str] | None = None) -> int:
    """``python -m protclip <command> ...``; commands: search."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m protclip {{{','.join(COMMANDS)}}} ...  (then --help)", file=sys.stderr)
        return EXIT_CONFIG
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(search_help())
        return 0
    return run_main(COMMANDS[argv[0]], argv[1:])
