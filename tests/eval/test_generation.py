"""Eval generation in this process: manifest seeds, resume, adapter proof, bad inputs.

(1 vs 2 Ray workers is in test_ray_eval.py.)"""

import json
import shutil

import pytest

from training.seeding import sample_seed

from ..conftest import CONFIGS
from .conftest import eval_cfg, media_bytes


def test_manifest_seeds_depend_only_on_prompt_and_repeat(tiny_wan, tiny_wan_run, tmp_path):
    from eval.generation import make_plan
    plan = make_plan(eval_cfg(tiny_wan, tmp_path, run=tiny_wan_run))
    assert [v.name for v in plan.variants] == ["base", "tiny-wan.step-0000002@1", "tiny-wan.step-0000004@1"]
    assert plan.variants[1].step == 2 and len(plan.variants[1].sha256) == 64
    by_variant = {}
    for row in plan.rows:
        assert row.seed == sample_seed(0, row.prompt_id, row.rep)
        by_variant.setdefault(row.variant, []).append((row.sample_id, row.seed, row.prompt))
    assert len({json.dumps(v) for v in by_variant.values()}) == 1   # identical for every variant
    assert len(by_variant["base"]) == 4 and len({s for _, s, _ in by_variant["base"]}) == 4
    lines = (tmp_path / "evals/tiny-wan/manifest.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["sample_id"] == "p00000-r000"
    # Another base seed changes every seed; samples_per_prompt=1 keeps repeat 0's seeds.
    other = make_plan(eval_cfg(tiny_wan, tmp_path, "seed=1", "name=other", "prompts.samples_per_prompt=1"))
    assert {r.seed for r in other.rows}.isdisjoint({r.seed for r in plan.rows})


def test_resumed_eval_equals_uninterrupted(tiny_wan, tiny_wan_run, tmp_path):
    from eval.generation import generate, make_plan, run_local
    full_cfg = eval_cfg(tiny_wan, tmp_path, "name=full", run=tiny_wan_run)
    full = generate(make_plan(full_cfg), progress=False)

    cut_cfg = eval_cfg(tiny_wan, tmp_path, "name=cut", run=tiny_wan_run)
    plan = make_plan(cut_cfg)
    # Reverse the task order (a different worker schedule) and stop after two tasks.
    plan.tasks.reverse()

    def interrupted(p, on_done):
        p.tasks = p.tasks[:2]
        run_local(p, on_done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(plan, interrupted, progress=False)
    root = tmp_path / "evals/cut"
    # Damage one finished sample: its media no longer matches its record and must be redone.
    done = sorted(root.glob("samples/*/*.mp4"))
    assert 0 < len(done) < 12
    done[0].write_bytes(b"not a video")
    plan = make_plan(cut_cfg)
    assert plan.done == len(done) - 1 and plan.redo == {"media missing or altered": 1}
    resumed = generate(plan, progress=False)
    assert make_plan(cut_cfg).pending == 0
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("timings", "path")} for r in recs]  # noqa: E731
    assert strip(resumed) == strip(full)
    assert media_bytes(root) == media_bytes(tmp_path / "evals/full")
    # Base differs from the adapters on the same seed; the proof of each adapter is on disk.
    assert len({r["output_sha256"] for r in full if r["sample_id"] == "p00000-r000"}) == 3
    proof = json.loads((root / "variants/tiny-wan.step-0000004@1.json").read_text())
    assert proof["effect_max_diff"] > 0 and proof["modules_matched"] == 20 and proof["missing"] == 0


def test_changed_adapter_file_is_regenerated(tiny_wan, tiny_wan_run, tmp_path):
    from eval.generation import generate, make_plan
    run = tmp_path / "run"
    shutil.copytree(tiny_wan_run, run)
    cfg = eval_cfg(tiny_wan, tmp_path, "variants.base=false", run=run)
    generate(make_plan(cfg), progress=False)
    # Replace step 2's adapter with step 4's (and its manifest): same path, new sha256.
    for f in ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "manifest.json"):
        shutil.copy(run / "checkpoints/step-0000004" / f, run / "checkpoints/step-0000002" / f)
    plan = make_plan(cfg)
    assert plan.redo == {"changed adapter_sha256": 4} and plan.done == 4


def test_adapter_without_effect_stops_the_eval_with_the_report(tiny_wan, tiny_wan_run, tmp_path):
    from safetensors.torch import load_file, save_file

    from eval.generation import generate, make_plan
    from training.adapters import AdapterError
    src = tiny_wan_run / "checkpoints/step-0000004/pytorch_lora_weights.safetensors"
    zero = {k: (v.zero_() if ".lora_B." in k else v) for k, v in load_file(str(src)).items()}
    save_file(zero, str(tmp_path / "zero.safetensors"))
    cfg = eval_cfg(tiny_wan, tmp_path, run=tmp_path / "zero.safetensors")
    with pytest.raises(AdapterError, match="no effect"):
        generate(make_plan(cfg), progress=False)
    root = tmp_path / "evals/tiny-wan"
    assert len(list((root / "samples/base").glob("*.mp4"))) == 4
    assert not list(root.glob("samples/zero@1/*")) and not (root / "variants/zero@1.json").exists()

    # An adapter for another model: nothing loads, and the error carries the key table.
    bad = {k.replace("blocks.0.", "blocks.7."): v for k, v in load_file(str(src)).items()}
    save_file(bad, str(tmp_path / "other.safetensors"))
    with pytest.raises(AdapterError, match="missing") as e:
        generate(make_plan(eval_cfg(tiny_wan, tmp_path, "name=other", "variants.base=false",
                                    run=tmp_path / "other.safetensors")), progress=False)
    assert "blocks.7" in str(e.value) and e.value.report is not None


def test_bad_inputs_give_named_errors_or_counted_skips(tiny_wan, tiny_wan_run, tmp_path):
    from eval.config import ConfigError
    from eval.generation import make_plan
    with pytest.raises(ConfigError, match="prompts.file not found: .*nope.txt"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={tmp_path / 'nope.txt'}"))
    with pytest.raises(ConfigError, match="unknown key 'sampling.stpes' \\(did you mean 'sampling.steps'"):
        eval_cfg(tiny_wan, tmp_path, "sampling.stpes=3")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        eval_cfg(tiny_wan, tmp_path, "variants.base=false")
    with pytest.raises(ConfigError, match="variants.adapters\\[0\\].path: .*missing-run does not exist"):
        make_plan(eval_cfg(tiny_wan, tmp_path, run=tmp_path / "missing-run"))
    (tmp_path / "empty-run/checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no complete checkpoint"):
        make_plan(eval_cfg(tiny_wan, tmp_path, run=tmp_path / "empty-run"))
    with pytest.raises(ConfigError, match="sampling.width=30 must be a multiple of 16"):
        make_plan(eval_cfg(tiny_wan, tmp_path, "sampling.width=30"))

    # tiny-wan samples with 32 text tokens: a longer prompt would be cut silently by the pipeline.
    long = "a red circle moving left " + " ".join(["and then right"] * 20)
    long_file = tmp_path / "long.txt"
    long_file.write_text(f"a blue square moving up\n{long}\n")
    with pytest.raises(ConfigError, match="prompt 'p00001' .* over the text encoder limit: tokenizer: \\d+ tokens > 32"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={long_file}"))
    plan = make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={long_file}", "prompts.too_long=skip"))
    assert {r.prompt_id for r in plan.rows} == {"p00000"}
    info = json.loads((tmp_path / "evals/tiny-wan/eval.json").read_text())
    assert [p["id"] for p in info["skipped_prompts"]] == ["p00001"]
    assert "too_long" in info["skipped_prompts"][0]["reason"]

    # jsonl prompts: ids key the seeds; duplicates are refused with both line numbers.
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": "circle", "prompt": "a red circle"}\n{"id": "circle", "prompt": "again"}\n')
    with pytest.raises(ConfigError, match="p.jsonl:2: prompt id 'circle' already used on line 1"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={jl}"))
    jl.write_text('{"id": "circle", "prompt": "a red circle"}\n')
    plan = make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={jl}"))
    assert plan.rows[0].sample_id == "circle-r000" and plan.rows[0].seed == sample_seed(0, "circle", 0)


def test_training_settings_mismatch_is_reported(tiny_wan, tiny_wan_run, tmp_path):
    from eval.generation import make_plan
    plan = make_plan(eval_cfg(tiny_wan, tmp_path, "sampling.width=48", "sampling.height=48", run=tiny_wan_run))
    warnings = plan.variants[1].warnings
    assert any("trained at data.width=32, sampled at sampling.width=48" in w for w in warnings)
    assert not plan.variants[0].warnings


def test_every_shipped_eval_config_validates():
    from eval.config import load_eval_config
    shipped = sorted((CONFIGS / "eval").glob("*.yaml"))
    assert len(shipped) >= 3
    for path in shipped:
        cfg = load_eval_config(path)
        assert cfg.prompts.file and cfg.variants.adapters


def test_more_config_errors_name_the_field(tiny_wan, tiny_wan_run, tmp_path):
    from eval.config import ConfigError
    from eval.generation import make_plan
    jl = tmp_path / "refs.jsonl"
    jl.write_text('{"id": "a", "prompt": "a red circle", "reference": "clips/a.mp4"}\n')
    with pytest.raises(ConfigError, match="refs.jsonl:1: reference file .*clips/a.mp4 not found"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={jl}"))
    jl.write_text('{"id": "a/b", "prompt": "a red circle"}\n')
    with pytest.raises(ConfigError, match="refs.jsonl:1: prompt id 'a/b' must be 1-128 letters"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={jl}"))
    jl.write_text('{"id": "a", "prompt": ""}\n')
    with pytest.raises(ConfigError, match="prompts.file: .*refs.jsonl:1: \"prompt\" must be a non-empty string"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"prompts.file={jl}"))
    with pytest.raises(ConfigError, match="variant names collide: \\['same.step-0000004@1'\\]; give the adapters distinct"):
        make_plan(eval_cfg(tiny_wan, tmp_path, f"variants.adapters=[{{path: {tiny_wan_run}, name: same, "
                                               f"checkpoints: latest}}, {{path: {tiny_wan_run}, name: same, "
                                               "checkpoints: latest}]"))
    with pytest.raises(ConfigError, match="metrics.fvd.frames=16 but samples have sampling.frames=9"):
        eval_cfg(tiny_wan, tmp_path, "metrics.enabled=true", "metrics.fvd.frames=16")


def test_a_negative_prompt_over_the_limit_stops_the_plan(tiny_wan, tmp_path):
    from eval.generation import make_plan
    from training.config import ConfigError
    with pytest.raises(ConfigError, match=r"sampling.negative_prompt is longer than the text encoder keeps "
                                          r"\(tokenizer: \d+ tokens > 32\)"):
        make_plan(eval_cfg(tiny_wan, tmp_path, "sampling.guidance=3.0", "sampling.negative_prompt=" + "red " * 40))
    # CFG off: the pipelines never encode it, so it is not checked
    make_plan(eval_cfg(tiny_wan, tmp_path, "sampling.guidance=1.0", "sampling.negative_prompt=" + "red " * 40))
