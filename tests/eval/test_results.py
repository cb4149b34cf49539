"""results.md and results.json from hand-made numbers (no model, no network): the table, its
intervals and deltas, the notes, and what write_results / recompute write and read back."""

import json

import pytest

from eval.manifest import EvalInfo, EvalLayout, write_jsonl
from eval.metrics.base import MetricResult
from eval.prompts import PromptSkip
from eval.results import markdown, recompute, write_results
from eval.variants import Variant

SAMPLE_WARNING = "fvd: 4 generated samples <= feature dimension 400: the covariance has rank <= 3"


def _m(name, value, ci=None, *, warnings=(), skipped=None, details=None, n=4):
    return MetricResult(name, value, n, ci, details=dict(details or {}), warnings=list(warnings),
                        skipped=skipped).to_dict()


def _d(value, ci):
    return {"value": value, "ci95": list(ci), "significant": not ci[0] <= 0 <= ci[1], "n": 3, "n_prompts": 3}


def _body():
    fvd_details = {"reference": "StyleGAN-V FVD", "frames": 16, "n_generated": 4, "std": 3.0,
                   "bootstrap_median": 121.0, "ci95_percentile_raw": [1, 2]}
    return {
        "eval": "demo", "git": {"sha": "0123456789abcdef0123", "dirty": True}, "config_hash": "c" * 64,
        "model": {"path": "/models/wan"}, "seed": 7, "samples_per_prompt": 2,
        "skipped_prompts": [{"id": "p9", "reason": "too_long (tokenizer: 40 tokens > 32)"}],
        "reference": {"n": 5, "shards": "/data/heldout", "skipped": "skipped 1 of 6: undecodable_media=1"},
        "variants": {
            "base": {"step": None, "scale": None, "n_samples": 4, "warnings": [], "proof": None, "delta_vs_base": {},
                     "metrics": {"fvd": _m("fvd", 120.5, (100.25, 140.75), warnings=[SAMPLE_WARNING],
                                           details=fvd_details),
                                 "clip_score": _m("clip_score", 31.234567, (30.1, 32.4))}},
            "lora@1": {"step": 400, "scale": 1.0, "n_samples": 3, "warnings": ["lora: trained at data.width=32"],
                       "proof": {"summary": "20/20 modules matched", "effect_max_diff": 0.0123},
                       "delta_vs_base": {"fvd": _d(-20.5, (-30.0, -11.0)), "clip_score": _d(1.5, (-0.25, 3.0))},
                       "delta_vs_previous": {"against": "lora0@1", "metrics": {"fvd": _d(-2.0, (-4.0, -0.5))}},
                       "metrics": {"fvd": _m("fvd", 100.0, (90.5, 110.25), warnings=[SAMPLE_WARNING]),
                                   "clip_score": _m("clip_score", 32.734567, (31.5, 34.0),
                                                    warnings=["clip_score: 1 prompt(s) truncated"]),
                                   "sharpness": _m("sharpness", None, skipped="no finite per-sample values", n=0)}},
        }}


def test_markdown_table_rows_values_intervals_and_deltas():
    lines = markdown(_body()).splitlines()
    assert lines[0] == "# Eval demo"
    assert lines[2] == ("git 0123456789ab (dirty) · config cccccccccccc · model /models/wan · seed 7 · "
                        "2 sample(s) per prompt")
    # Columns are the metric names, sorted; a variant without a metric shows "-".
    i = lines.index("| variant | step | scale | n | clip_score | fvd | sharpness |")
    assert lines[i + 1] == "|---|---|---|---|---|---|---|"
    # value to 4 significant digits, the interval to 3, the paired delta to 3 with its sign and its
    # interval, n.s. where that interval holds 0, ⚠ for warnings
    assert lines[i + 2] == "| base | - | - | 4 | 31.23 [30.1, 32.4] | 120.5 [100, 141] ⚠ | - |"
    assert lines[i + 3] == ("| lora@1 | 400 | 1.0 | 3 | 32.73 [31.5, 34] (+1.5 [-0.25, +3] n.s.) ⚠ "
                            "| 100 [90.5, 110] (-20.5 [-30, -11]) ⚠ | skipped |")
    assert lines[i + 4] == ""
    j = lines.index("## Each checkpoint vs the one before (paired, same prompts and seeds)")
    assert lines[j + 1] == "- lora@1 vs lora0@1: fvd -2 [-4, -0.5]"


def test_markdown_notes_list_a_shared_warning_once_and_name_the_rest():
    md = markdown(_body())
    notes = md.split("## Notes\n")[1].split("\n\n")[0].splitlines()
    assert notes == [
        "- lora@1: lora: trained at data.width=32",
        f"- {SAMPLE_WARNING}",                                        # both variants: once, no names
        "- clip_score: 1 prompt(s) truncated (lora@1)",
        "- sharpness: skipped: no finite per-sample values (lora@1)",
        "- 1 prompt(s) left out of every variant (too long): p9",
        "- reference: 5 samples from /data/heldout; skipped 1 of 6: undecodable_media=1"]
    # How each metric was computed: the first variant's details, without per-variant counts and spreads.
    assert ('- fvd: `{"frames": 16, "reference": "StyleGAN-V FVD"}`' in md.splitlines())
    assert md.endswith("## Adapters (loaded completely and proven to change the output)\n"
                       "- lora@1: 20/20 modules matched; effect 1.230e-02\n")


def test_markdown_without_base_or_intervals():
    body = _body()
    body["git"] = {"sha": None, "dirty": None}
    body["skipped_prompts"], body["reference"] = [], None
    body["variants"] = {"a@0.5": {"step": 3, "scale": 0.5, "n_samples": 1, "warnings": [], "proof": None,
                                  "metrics": {"psnr": _m("psnr", 12.3456789, None, n=1)}}}
    md = markdown(body)
    assert "git unknown · config" in md and "(dirty)" not in md
    assert "| a@0.5 | 3 | 0.5 | 1 | 12.35 |" in md.splitlines()
    assert "## Notes" not in md and "## Adapters" not in md


@pytest.fixture
def eval_dir(tmp_path):
    """An eval folder with eval.json, records and one adapter proof, as generation leaves it."""
    from eval.config import load_eval_config
    cfg = load_eval_config(None, ["metrics.bootstrap=0"], base={
        "name": "demo", "output_dir": str(tmp_path), "model": {"path": str(tmp_path / "model")},
        "prompts": {"file": "prompts.txt"}, "seed": 7})
    variants = [Variant("base"), Variant("lora@1", "/runs/lora.safetensors", 1.0, 400, "d" * 64, group="lora",
                                         warnings=["lora: trained at data.width=32"])]
    info = EvalInfo(config=cfg.to_dict(), config_hash="a" * 64, settings_hash="b" * 64, sampling={"steps": 3},
                    variants=variants, skipped_prompts=[PromptSkip("p9", "too_long")], truncated_prompts=[],
                    family="wan", modality="video")
    layout = EvalLayout(cfg.out_dir.resolve())
    records = [{"variant": "base", "sample_id": "p0-r000"}, {"variant": "base", "sample_id": "p0-r001"},
               {"variant": "lora@1", "sample_id": "p0-r000"}]
    proof = {"variant": "lora@1", "summary": "20/20 modules matched", "effect_max_diff": 0.5}
    layout.proof("lora@1").parent.mkdir(parents=True)
    layout.proof("lora@1").write_text(json.dumps(proof))
    layout.info.write_text(json.dumps(info.to_dict()))
    write_jsonl(layout.records, records)
    return cfg, layout, info, records, proof


@pytest.fixture
def fake_metrics(monkeypatch):
    """compute_metrics replaced by hand-made numbers; the calls it got."""
    import eval.metrics.pipeline as pipeline
    calls = []

    def compute_metrics(cfg, layout, modality, variants, records, progress=True):
        calls.append((cfg, layout, modality, variants, records))
        return pipeline.EvalMetrics(
            variants={"base": {"fvd": MetricResult("fvd", 120.0, 2, (110.0, 130.0)),
                               "clip_score": MetricResult("clip_score", 30.0, 2, (29.0, 31.0))},
                      "lora@1": {"fvd": MetricResult("fvd", 100.0, 1, (95.0, 105.0)),
                                 "clip_score": MetricResult.skip("clip_score", "no samples")}},
            reference={"shards": "/h", "n": 5, "skipped": "skipped 0 of 5"},
            per_sample={"base": {"p0-r000": {"clip_cosine": 0.3}}},
            deltas={"lora@1": {"vs_base": {"against": "base", "metrics": {
                "fvd": {"value": -20.0, "ci95": [-25.0, -15.0], "significant": True}}}}})

    monkeypatch.setattr(pipeline, "compute_metrics", compute_metrics)
    return calls


def test_write_results_writes_what_it_returns(eval_dir, fake_metrics):
    cfg, layout, info, records, proof = eval_dir
    workers = [{"host": "h", "pid": 1, "threads": 1}]
    body = write_results(cfg, layout, info, records, workers, progress=False)
    assert fake_metrics[0][2:] == ("video", info.variants, records)
    base, lora = body["variants"]["base"], body["variants"]["lora@1"]
    # deltas are the metrics stage's paired ones, as it computed them
    assert lora["delta_vs_base"] == {"fvd": {"value": -20.0, "ci95": [-25.0, -15.0], "significant": True}}
    assert base["delta_vs_base"] == {} and lora["delta_vs_previous"] is None and base["delta_vs_previous"] is None
    assert (lora["adapter"], lora["sha256"], lora["scale"], lora["step"], lora["group"]) == \
           ("/runs/lora.safetensors", "d" * 64, 1.0, 400, "lora")
    assert lora["warnings"] == ["lora: trained at data.width=32"] and lora["proof"] == proof and base["proof"] is None
    assert (base["n_samples"], lora["n_samples"]) == (2, 1)
    assert base["metrics"]["fvd"] == {"name": "fvd", "value": 120.0, "n": 2, "ci95": [110.0, 130.0], "n_ref": None,
                                      "details": {}, "warnings": [], "skipped": None}
    assert [s["metrics"] for s in body["samples"]] == [{"clip_cosine": 0.3}, {}, {}]
    assert (body["config_hash"], body["settings_hash"], body["seed"]) == ("a" * 64, "b" * 64, 7)
    assert body["skipped_prompts"] == [{"id": "p9", "reason": "too_long"}]
    assert body["model"]["family"] == "wan" and body["model"]["modality"] == "video"
    assert body["model"]["denoiser_config_sha256"] is None and body["hardware"]["workers"] == workers
    assert body["reference"] == {"shards": "/h", "n": 5, "skipped": "skipped 0 of 5"}
    text = layout.results.read_text()
    assert json.loads(text) == body and text.startswith('{\n "config": {')   # indent=1, sorted keys
    md = layout.report.read_text()
    assert md == markdown(body)
    assert "| lora@1 | 400 | 1.0 | 1 | skipped | 100 [95, 105] (-20 [-25, -15]) |" in md.splitlines()


def test_recompute_reads_the_plan_back_typed(eval_dir, fake_metrics):
    cfg, layout, info, records, _ = eval_dir
    first = write_results(cfg, layout, info, records, [{"host": "h", "pid": 1}], progress=False)
    again = recompute(layout.root, ["metrics.bootstrap=5"], progress=False)
    cfg2, _, modality, variants, recs = fake_metrics[-1]
    assert cfg2.metrics.bootstrap == 5 and modality == "video" and recs == records
    assert variants == info.variants and all(isinstance(v, Variant) for v in variants)
    assert again["hardware"]["workers"] == [{"host": "h", "pid": 1}]   # the workers that made the samples
    assert again["variants"] == first["variants"]


def test_eval_info_round_trips():
    info = EvalInfo(config={"name": "x"}, config_hash="a", settings_hash="b", sampling={"fps": 8},
                    variants=[Variant("base"), Variant("l@2", "/l", 2.0, None, "s", allow_partial=True)],
                    skipped_prompts=[PromptSkip("p1", "too_long")], truncated_prompts=[PromptSkip("p2", "cut")],
                    family="sd3", modality="image")
    d = json.loads(json.dumps(info.to_dict()))
    assert EvalInfo.from_dict(d) == info
    assert d["variants"][1]["allow_partial"] is True and d["skipped_prompts"] == [{"id": "p1", "reason": "too_long"}]
