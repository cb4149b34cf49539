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


def test_open_run_continues_the_newest_unfinished_run_of_this_bench_only(tmp_path, capsys):
    from cluster.bench import BenchRun, open_run
    cfg = load_bench_config(CONFIGS / "bench/tiny.yaml", [f"out_dir={tmp_path}"])
    for rid, bench, started, stage in [("tiny-1", "tiny", "2026-12-01T00:00:00+00:00", "trained"),
                                       ("tiny-2", "tiny", "2026-12-02T00:00:00+00:00", "evaluated"),
                                       ("tiny-3", "tiny", "2026-12-03T00:00:00+00:00", "recorded"),
                                       ("tiny-extra-9", "tiny-extra", "2026-12-09T00:00:00+00:00", "started")]:
        (tmp_path / rid).mkdir()
        BenchRun(rid, started, stage, tmp_path / rid, bench).save()
    run = open_run(cfg)
    assert (run.id, run.stage) == ("tiny-2", "evaluated")   # newest unfinished of "tiny"; not the other bench's
    assert "continuing unfinished run tiny-2 (stage: evaluated)" in capsys.readouterr().out
    assert open_run(cfg, run_id="tiny-3").stage == "recorded"      # named: even a recorded one
    fresh = open_run(cfg, new=True)
    assert fresh.id not in {"tiny-1", "tiny-2", "tiny-3"} and fresh.stage == "started" and fresh.bench == "tiny"
    assert (tmp_path / fresh.id / "bench.json").is_file()
