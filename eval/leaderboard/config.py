"""The bench config (``configs/bench/*.yaml``): which training and eval configs make one nightly
run, where runs, the store and the page go, and what counts as a regression."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from training.config import ConfigError, Section, describe_fields, load_typed

from .regress import RegressionSettings

REPO = Path(__file__).resolve().parent.parent.parent


class StageConfig(Section):
    config: str = Field(description="the stage's YAML config (configs/train/... or configs/eval/...)")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides applied on top")

    @field_validator("overrides")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        bad = [o for o in v if "=" not in o]
        if bad:
            raise ValueError(f"overrides are key=value, got {bad}")
        return v


class BenchConfig(Section):
    name: str = Field(description="the bench's name: its runs form one series (baselines, history)")
    train: StageConfig
    eval: StageConfig
    assets: Literal["none", "tiny"] = Field(
        "none", description="tiny: build the tiny Wan model, synthetic shards and random metric networks "
                            "under out_dir when missing, and point both stages at them (CI, the demo)")
    out_dir: str = Field("bench", description="a folder per run: <out_dir>/<run id>/{train,eval,alerts.json}")
    store: str = Field("bench/leaderboard.db", description="SQLite file, or any SQLAlchemy URL")
    leaderboard: Optional[str] = Field("bench/leaderboard", description="page rendered after each run (null: none)")
    peak_tflops: Optional[float] = Field(None, gt=0, description="peak dense TFLOP/s of one training device, for "
                                                                 "the MFU when the GPU is not in training.flops")
    regression: RegressionSettings = Field(default_factory=RegressionSettings)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", v):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names folders and run ids)")
        return v


def stage_path(path: str) -> Path:
    """A stage config path as given, or else relative to the repository (shipped configs)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    return REPO / p if (REPO / p).is_file() else p


def load_bench_config(path: Union[str, Path, None], overrides: Optional[list[str]] = None) -> BenchConfig:
    cfg = load_typed(BenchConfig, path, overrides, shipped="configs/bench/")
    for key in ("train", "eval"):
        p = stage_path(getattr(cfg, key).config)
        if not p.is_file():
            raise ConfigError(f"{key}.config: {p} does not exist (a YAML under configs/{key}/)")
    return cfg


def help_text() -> str:
    return "\n".join(describe_fields(BenchConfig))
