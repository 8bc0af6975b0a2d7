"""Downstream evaluation suites (pure: no Ray), selected by name with a typed config.

    result = run_suite("linear_probe", {"path": ".../deeploc_test_set.fasta", "format": "deeploc"}, embedder)
    result.metrics  # {"acc": ..., "f1_macro": ..., "majority_acc": ...}

``SUITES[name]`` gives the config dataclass and the run function. Configs accept a plain mapping (YAML) via
``make_config``; unknown keys and bad values raise ``ValueError``. Metric names are bare and MLflow-safe
(``p2t_r1``); the Ray wrapper (``protclip/eval/tasks.py``) prefixes them with ``eval/<suite>/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protclip.data.splits import split_by_hash
from protclip.eval.embedder import Embedder
from protclip.eval.suites import finetune_head, linear_probe, mutation, ppi, retrieval, zero_shot
from protclip.eval.suites.base import SuiteConfig, SuiteResult
from protclip.eval.suites.finetune_head import FinetuneHeadConfig
from protclip.eval.suites.linear_probe import LinearProbeConfig
from protclip.eval.suites.mutation import MutationConfig
from protclip.eval.suites.ppi import PPIConfig
from protclip.eval.suites.retrieval import RetrievalConfig
from protclip.eval.suites.zero_shot import ZeroShotConfig

_METRIC_NAME = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class SuiteSpec:
    config_cls: type[SuiteConfig]
    run: Callable[[Any, Embedder], SuiteResult]
    needs: tuple[str, ...]  # Embedder methods the suite calls (the Ray wrapper can check before launching)


SUITES: dict[str, SuiteSpec] = {
    "retrieval": SuiteSpec(RetrievalConfig, retrieval.run, ("embed_proteins", "embed_texts")),
    "zero_shot": SuiteSpec(ZeroShotConfig, zero_shot.run, ("embed_proteins", "embed_texts")),
    "linear_probe": SuiteSpec(LinearProbeConfig, linear_probe.run, ("embed_proteins",)),
    "finetune_head": SuiteSpec(FinetuneHeadConfig, finetune_head.run, ("embed_proteins",)),
    "mutation": SuiteSpec(MutationConfig, mutation.run, ("mlm_log_probs",)),
    "ppi": SuiteSpec(PPIConfig, ppi.run, ("embed_proteins",)),
}


def _spec(name: str) -> SuiteSpec:
    if name not in SUITES:
        raise ValueError(f"unknown eval suite {name!r}; known: {sorted(SUITES)}")
    return SUITES[name]


def make_config(name: str, values: Mapping[str, Any] | SuiteConfig) -> SuiteConfig:
    """The suite's config from a mapping (unknown keys -> ValueError) or an instance (type-checked)."""
    spec = _spec(name)
    if isinstance(values, SuiteConfig):
        if not isinstance(values, spec.config_cls):
            raise TypeError(f"suite {name!r} takes {spec.config_cls.__name__}, got {type(values).__name__}")
        return values
    return spec.config_cls.from_dict(dict(values))


def run_suite(name: str, cfg: Mapping[str, Any] | SuiteConfig, embedder: Embedder) -> SuiteResult:
    """Run one suite; metrics come back as plain floats under lower-case ``[a-z0-9_]`` names."""
    spec = _spec(name)
    result = spec.run(make_config(name, cfg), embedder)
    bad = [k for k in result.metrics if not _METRIC_NAME.fullmatch(k)]
    if bad:
        raise AssertionError(f"suite {name!r} produced metric names that are not MLflow-safe: {bad}")
    return result


__all__ = [
    "SUITES",
    "FinetuneHeadConfig",
    "LinearProbeConfig",
    "MutationConfig",
    "PPIConfig",
    "RetrievalConfig",
    "SuiteConfig",
    "SuiteResult",
    "SuiteSpec",
    "ZeroShotConfig",
    "make_config",
    "run_suite",
    "split_by_hash",
]
