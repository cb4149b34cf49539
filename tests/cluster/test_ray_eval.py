"""Eval generation on a real local Ray: 1 vs 2 actors give identical bytes; worker errors surface."""

import json

import pytest
from safetensors.torch import load_file, save_file

from ..eval.conftest import eval_cfg, media_bytes

pytestmark = pytest.mark.distributed  # real multi-process clusters: outside the quick tier


def test_one_and_two_actors_write_identical_samples(local_ray, tiny_wan, tiny_wan_run, tmp_path):
    from cluster.eval import run
    bodies = {}
    for n in (1, 2):
        cfg = eval_cfg(tiny_wan, tmp_path, "parallel.backend=ray", f"parallel.num_workers={n}", f"name=w{n}",
                       run=tiny_wan_run)
        bodies[n] = run(cfg, progress=False)
    one, two = media_bytes(tmp_path / "evals/w1"), media_bytes(tmp_path / "evals/w2")
    assert len(one) == 12 and one == two
    # Both actors really worked in the 2-worker run (else this would test nothing).
    assert len({w["pid"] for w in bodies[2]["hardware"]["workers"]}) == 2
    assert len({w["pid"] for w in bodies[1]["hardware"]["workers"]}) == 1
    strip = lambda b: [{k: v for k, v in s.items() if k not in ("timings",)} for s in b["samples"]]  # noqa: E731
    assert strip(bodies[1]) == strip(bodies[2])
    # And the same as this process generating them (same thread count: 1).
    from eval.generation import generate, make_plan
    generate(make_plan(eval_cfg(tiny_wan, tmp_path, "name=local", run=tiny_wan_run)), progress=False)
    assert media_bytes(tmp_path / "evals/local") == one
    body = json.loads((tmp_path / "evals/w2/results.json").read_text())
    assert body["variants"]["tiny-wan.step-0000004@1"]["proof"]["effect_max_diff"] > 0


def test_adapter_error_in_an_actor_stops_the_eval_with_its_report(local_ray, tiny_wan, tiny_wan_run, tmp_path):
    from cluster.eval import run
    from training.adapters import AdapterError
    src = tiny_wan_run / "checkpoints/step-0000004/pytorch_lora_weights.safetensors"
    save_file({k: (v.zero_() if ".lora_B." in k else v) for k, v in load_file(str(src)).items()},
              str(tmp_path / "zero.safetensors"))
    cfg = eval_cfg(tiny_wan, tmp_path, "parallel.backend=ray", "parallel.num_workers=2", "variants.base=false",
                   run=tmp_path / "zero.safetensors")
    with pytest.raises(AdapterError, match="every B matrix is zero"):
        run(cfg, progress=False)
    assert not list((tmp_path / "evals/tiny-wan").glob("samples/*/*.mp4"))
