"""Shared entry-point plumbing: one-line errors and non-zero exits instead of stack-trace soup.

Every job's ``main(argv)`` (``protclip/recipes/``) runs under :func:`run_main`; this module imports no job.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from protclip.config import ConfigError
from protclip.storage import StorageError, redact

EXIT_CONFIG = 2
EXIT_STORAGE = 3
EXIT_FAILED = 1


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "s3fs", "urllib3", "werkzeug", "filelock", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; map known errors to a clear one-line message and an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print((main.__doc__ or "").strip())
        return 0
    try:
        rc = main(argv)
        return int(rc or 0)
    except ConfigError as e:
        print(f"config error: {redact(str(e))}", file=sys.stderr)
        return EXIT_CONFIG
    except StorageError as e:
        print(f"storage error: {redact(str(e))}", file=sys.stderr)
        return EXIT_STORAGE
    except FileNotFoundError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return EXIT_FAILED
