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
