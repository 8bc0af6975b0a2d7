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

from protclip.cli import EXIT_CONFIG, EXIT_FAILED, run_main, setup_logging
from protclip.config import ConfigError
from protclip.search.identity import IndexModelMismatch
from protclip.storage import redact

__all__ = ["main", "search_main", "EXIT_MISMATCH"]

EXIT_MISMATCH = 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m protclip search", add_help=False)
    p.add_argument("--index", required=True, help="index folder (path or URI) written by jobs/index.py")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", action="append", help="a function text (repeat for several)")
    q.add_argument("--fasta", help="proteins to annotate (path or URI); needs a text index")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--format", choices=("json", "tsv"), default="json")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--export", help="model export folder (default: the model index.json records)")
    m.add_argument("--checkpoint", help="model checkpoint folder")
    m.add_argument("--mlflow-run-id", help="pre-training MLflow run")
    p.add_argument("--model-config", help="run config describing a checkpoint's architecture")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (for --mlflow-run-id)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    return p


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
        args = _parser().parse_args(argv)
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
    return run_main(COMMANDS[argv[0]], argv[1:])
