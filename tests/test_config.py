"""The typed config system: YAML + dotted overrides, clear errors for unknown keys and bad values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from protclip.config import ConfigError, cli_config, dump_yaml, flatten, load_config


@dataclass
class Sampling:
    mode: Literal["none", "once", "per_epoch"] = "none"
    seed: int = 0
    exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.exponent < 0:
            raise ValueError("exponent must be >= 0")


@dataclass
class Data:
    uri: str = "data/"
    sampling: Sampling = field(default_factory=Sampling)
    columns: list[str] = field(default_factory=lambda: ["sequence", "text"])
    limit: int | None = None


@dataclass
class Root:
    data: Data = field(default_factory=Data)
    steps: int = 10
    flag: bool = False


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  uri: s3://b/x\n  sampling:\n    mode: once\nsteps: 5\n")
    cfg = load_config(Root, p, ["--data.sampling.seed", "7", "--flag=true", "--data.columns", "[a, b]"])
    assert cfg.data.uri == "s3://b/x"
    assert cfg.data.sampling.mode == "once"
    assert cfg.data.sampling.seed == 7 and isinstance(cfg.data.sampling.seed, int)
    assert cfg.flag is True and cfg.steps == 5
    assert cfg.data.columns == ["a", "b"]


def test_cli_config_and_roundtrip(tmp_path):
    cfg = cli_config(Root, ["--steps", "3", "--data.limit", "null"])
    assert cfg.steps == 3 and cfg.data.limit is None
    p = tmp_path / "dump.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(Root, p) == cfg
    flat = flatten(cfg)
    assert flat["data.sampling.seed"] == 0 and flat["data.columns"] == '["sequence", "text"]'


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["--data.sampling.sed", "7"], "data.sampling.sed"),
        (["--steps", "ten"], "steps: expected an integer"),
        (["--data.sampling.mode", "twice"], "not one of"),
        (["--data.sampling.exponent", "-1"], "exponent must be >= 0"),
        (["--flag", "maybe"], "expected true/false"),
        (["--steps"], "has no value"),
    ],
)
def test_bad_overrides_are_clear(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(Root, None, overrides)
    assert needle in str(e.value)


def test_unknown_yaml_key_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  samplng: {seed: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(Root, p)
    msg = str(e.value)
    assert "data.samplng" in msg and "sampling" in msg and str(p) in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Root, p)
