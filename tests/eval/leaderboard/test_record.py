"""The page's data from stored runs (eval.leaderboard.record.site_data)."""

from __future__ import annotations

from eval.leaderboard.record import comparable_config, site_data

from .test_store import make_run


def test_site_data_keeps_63_bit_seeds_exact_and_flattens_intervals():
    run = make_run("n-1", "2026-12-01T00:00:00+00:00")
    run.samples[0]["seed"] = 2**62 + 1          # a float64 (JavaScript number) would round it
    run.alerts = [{"key": "run.step-1000@1/fvd", "value": 120.0, "baseline": 100.0, "threshold": 0.05,
                   "message": "fvd worse"}]
    data = site_data([run], {"fvd": -1}, "2026-12-02T00:00:00+00:00")
    r = data["runs"][0]
    assert r["samples"][0]["seed"] == "4611686018427387905"
    v = r["variants"][1]
    assert v["metrics"]["fvd"] == {"value": 100.0, "lo": 90.0, "hi": 110.0, "n": 8}
    assert v["delta_vs_base"]["clip_score"] == {"value": 1.0, "lo": -0.5, "hi": 2.5, "n": 8, "significant": False}
    assert r["variants"][2]["delta_vs_previous"]["against"] == "run.step-1000@1"
    assert r["alerts"][0]["metric"] == "fvd" and r["alerts"][0]["variant"] == "run.step-1000@1"
    assert r["loss"] == [[1, 0.5], [2, 0.25]] and data["directions"] == {"fvd": -1}
    assert run.samples[0]["seed"] == 2**62 + 1   # the record itself is not changed


def test_comparable_config_leaves_out_this_nights_paths():
    a = comparable_config({"name": "n"}, {"output_dir": "/b/n-1/train", "run_name": "n", "seed": 0},
                          {"output_dir": "/b/n-1/eval", "variants": {"adapters": [{"path": "/b/n-1/train/n"}],
                                                                     "base": True}})
    b = comparable_config({"name": "n"}, {"output_dir": "/b/n-2/train", "run_name": "n", "seed": 0},
                          {"output_dir": "/b/n-2/eval", "variants": {"adapters": [{"path": "/b/n-2/train/n"}],
                                                                     "base": True}})
    assert a == b == {"bench": {"name": "n"}, "train": {"seed": 0}, "eval": {"variants": {"base": True}}}


def test_training_perf_from_the_metrics_log_and_mfu_from_the_ranks_device(tiny_wan, tmp_path):
    """Throughput medians leave out the warm-up steps, peaks are per rank, the loss curve has every
    step, and the MFU uses the device the training ranks reported (not the recording process's)."""
    import json

    import pytest

    from eval.leaderboard.record import WARMUP_STEPS, build_record
    from tests.conftest import tiny_config
    from training.flops import training_flops
    from training.fsio import write_jsonl
    from training.layout import RunLayout

    cfg = tiny_config("wan", tiny_wan, "unused", tmp_path)
    layout = RunLayout(tmp_path / "run")
    layout.logs.mkdir(parents=True)
    sps = [1.0, 2.0, 10.0, 12.0, 11.0]           # steps 1-2 are warm-up: median of the rest is 11
    write_jsonl(layout.metrics, [
        {"step": i + 1, "loss": 1.0 / (i + 1), "samples_per_s": s, "step_seconds": 8.0 / s,
         "peak_memory_bytes": 100 + i, "peak_memory_bytes_rank0": 100 + i, "peak_memory_bytes_rank1": 200 - i}
        for i, s in enumerate(sps)])
    layout.result.write_text(json.dumps({"steps": 5, "engine": "DeepSpeed ZeRO-2", "losses": {"5": 0.2},
                                         "device_name": "NVIDIA H100 80GB HBM3"}))
    body = {"variants": {"base": {"step": None, "scale": None, "group": None, "sha256": None, "metrics": {}}},
            "samples": [], "config": {"output_dir": "/x"}, "model": {"modality": "video"}, "git": {"sha": None},
            "seed": 3, "libraries": {}, "hardware": {}}
    rec = build_record(run_id="r", bench="b", bench_config={}, started="s", finished="f", train_cfg=cfg,
                       train_dir=layout.root, eval_body=body, eval_dir=tmp_path, world_size=2)
    p = rec.perf
    assert WARMUP_STEPS == 2 and p["samples_per_s"] == 11.0 and p["step_seconds"] == pytest.approx(8.0 / 11.0)
    assert p["peak_memory_bytes"] == {"0": 104, "1": 200} and p["device"] == "NVIDIA H100 80GB HBM3"
    flops = training_flops(cfg).per_sample
    assert p["flops_per_sample"] == flops and p["mfu"] == pytest.approx(flops * 11.0 / (2 * 989e12))
    assert rec.losses == [(i + 1, 1.0 / (i + 1)) for i in range(5)]   # the log, not result.json's last leg
    assert rec.provenance["seeds"] == {"train": cfg.seed, "eval": 3}
    assert set(rec.provenance["model"]["sha256"]) >= {"transformer", "vae", "scheduler"}
