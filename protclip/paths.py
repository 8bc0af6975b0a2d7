"""Where the project's files and the shared real data live.

The real UniProt samples, the DeepLoc test set and the GO slim sit in a ``shared/data`` folder beside the
checkout (CI clones the repo next to it). ``PROTCLIP_SHARED_DATA`` points elsewhere when needed.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """Return the folder with the real sample data, or raise naming where it was looked for."""
    env = os.environ.get("PROTCLIP_SHARED_DATA")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared" / "data", REPO_ROOT / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    raise FileNotFoundError(
        "shared data folder not found (looked in: "
        + ", ".join(str(c) for c in candidates)
        + "); set PROTCLIP_SHARED_DATA to the folder holding uniprot_samples/"
        + ("; this is a `ray job submit` job, whose working dir is Ray's copy of the repository without the "
           "folder beside it: set PROTCLIP_SHARED_DATA in the runtime env (a path every node sees) or name the "
           "data by an s3:// URI in the config" if in_job else "")
    )


def uniprot_samples_dat() -> Path:
    """The 103 real UniProtKB flat-file entries used by tests and the demo."""
    return shared_data_dir() / "uniprot_samples" / "uniprot_samples.dat"


#: config prefix of paths under the shared data folder: ``shared:uniprot_corpus/uniprot_corpus.dat.gz``
SHARED_PREFIX = "shared:"


def resolve_shared(value: str) -> str:
    """``shared:<path>`` -> that path under :func:`shared_data_dir`; any other value unchanged.

    Lets shipped configs name the real data without a path relative to the source tree, which would break
    from another working directory or inside a ``ray job submit`` package."""
    if value.startswith(SHARED_PREFIX):
        return str(shared_data_dir() / value[len(SHARED_PREFIX):].lstrip("/"))
    return value
