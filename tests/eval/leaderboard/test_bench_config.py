"""Shipped bench configs load, and both stage configs they name resolve and validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.leaderboard.config import load_bench_config
from training.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "bench").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_bench_configs_and_their_stages_validate(path, tmp_path):
    from cluster.bench import BenchRun, stage_configs
    cfg = load_bench_config(path, [f"out_dir={tmp_path}"])
    assert cfg.name == path.stem
    # Stage configs as the bench resolves them (assets are built by the end-to-end test only).
    run = BenchRun(f"{cfg.name}-x", "2026-12-02T00:00:00+00:00", "started", tmp_path / f"{cfg.name}-x")
    tcfg, ecfg = stage_configs(cfg.model_copy(update={"assets": "none"}), run)
    assert tcfg.parallel.backend == "ray" and ecfg.parallel.backend == "ray"
    assert tcfg.run_name == cfg.name and Path(tcfg.output_dir) == run.root / "train"
    assert tcfg.train.resume == "auto" and ecfg.out_dir == run.root / "eval" / cfg.name
    assert [str(a.path) for a in ecfg.variants.adapters] == [str(run.root / "train" / cfg.name)]


def test_bench_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="regression.windw"):
        load_bench_config(CONFIGS / "bench/tiny.yaml", ["regression.windw=3"])
    with pytest.raises(ConfigError, match="name"):
        load_bench_config(CONFIGS / "bench/tiny.yaml", ["name=a/b"])
    with pytest.raises(ConfigError, match="train.config: .*missing.yaml does not exist"):
        load_bench_config(CONFIGS / "bench/tiny.yaml", ["train.config=missing.yaml"])
