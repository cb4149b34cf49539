"""End-to-end trainer tests on tiny random models and real shards (CPU)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import CheckpointError, read_manifest
from training.config import ConfigError
from training.data.pipeline import DataError
from training.layout import RunLayout
from training.adapters.files import DIFFUSERS_PREFIX, PEFT_PREFIX
from training.runtime import RuntimeConfigError
from training.trainer import Trainer

from ..conftest import tiny_config


def tree(root: Path) -> set[str]:
    """Relative paths of files, with TensorBoard's host/time-dependent names normalised."""
    out = set()
    for p in root.rglob("*"):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            out.add("logs/events.out.tfevents.*" if "tfevents" in rel else rel)
    return out


def ckpt_files(step: int) -> set[str]:
    d = f"checkpoints/step-{step:07d}"
    return {f"{d}/{f}" for f in ["adapter_model.safetensors", "adapter_config.json",
                                 "pytorch_lora_weights.safetensors", "config.yaml", "manifest.json",
                                 "train_state/optimizer.safetensors", "train_state/optimizer.json",
                                 "train_state/rank-00000.json", "train_state/rank-00000.rng.safetensors",
                                 "train_state/state.json"]}


def test_wan_run_directory_tree_is_exact(tiny_wan, video_shards, tmp_path):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=4",
                      "checkpoint.every_steps=2", "checkpoint.keep_last=1")
    result = Trainer(cfg).run()
    root = tmp_path / "runs" / "tiny-wan"
    assert result.run_dir == root and result.steps == 4
    assert tree(root) == {"config.yaml", "result.json", "shard_index.json", "logs/metrics.jsonl",
                          "logs/events.out.tfevents.*"} | ckpt_files(4)
    assert [json.loads(line)["step"] for line in (root / "logs/metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    manifest = read_manifest(root / "checkpoints/step-0000004")  # verifies every sha256
    assert manifest["step"] == 4 and manifest["lora"]["rank"] == 8
    assert manifest["base_model"]["family"] == "wan"
    assert len(manifest["base_model"]["transformer_config_sha256"]) == 64
    assert set(manifest["files"]) == {p.split("step-0000004/")[1] for p in ckpt_files(4)} - {"manifest.json"}
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))


def _loss_drops(losses: dict[int, float], k: int = 10) -> tuple[float, float]:
    values = [losses[s] for s in sorted(losses)]
    return statistics.mean(values[:k]), statistics.mean(values[-k:])


@pytest.mark.slow  # ~5 s of tiny training: outside the quick tier
def test_wan_loss_decreases(tiny_wan, video_shards, tmp_path):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=60",
                      "checkpoint.every_steps=1000", "log.tensorboard=false")
    result = Trainer(cfg).run()
    first, last = _loss_drops(result.losses)
    assert all(v == v and abs(v) < 1e4 for v in result.losses.values())
    assert last < first * 0.95, (first, last)


@pytest.mark.slow  # ~5 s of tiny training: outside the quick tier
def test_sd3_trains_and_loss_decreases(tiny_sd3, image_shards, tmp_path):
    cfg = tiny_config("sd3", tiny_sd3, image_shards, tmp_path, "train.max_steps=100",
                      "checkpoint.every_steps=50", "log.tensorboard=false")
    result = Trainer(cfg).run()
    root = tmp_path / "runs" / "tiny-sd3"
    assert tree(root) == {"config.yaml", "result.json", "shard_index.json", "logs/metrics.jsonl"} | ckpt_files(50) | ckpt_files(100)
    first, last = _loss_drops(result.losses, k=20)
    assert last < first * 0.95, (first, last)
    keys = load_file(str(root / "checkpoints/step-0000100/pytorch_lora_weights.safetensors"))
    assert any(".add_q_proj.lora_A." in k for k in keys)  # both MMDiT streams adapted


def test_wan22_ti2v_layout_trains(tiny_wan_ti2v, video_shards, tmp_path):
    # Wan2.2-TI2V: 48-channel VAE at 16x and per-token timesteps (expand_timesteps).
    cfg = tiny_config("wan", tiny_wan_ti2v, video_shards, tmp_path, "train.max_steps=2",
                      "checkpoint.every_steps=2", "log.tensorboard=false")
    result = Trainer(cfg).run()
    assert result.steps == 2 and all(v == v for v in result.losses.values())


@pytest.mark.slow  # ~5 s of tiny training: outside the quick tier
def test_exact_resume_matches_uninterrupted_run(tiny_wan, video_shards, tmp_path):
    # LoRA dropout > 0 makes the global RNG matter too; batches cross an epoch boundary
    # (3 shards x 16 samples = 48 < 12 steps x 4).
    common = ["train.max_steps=12", "checkpoint.every_steps=6", "checkpoint.keep_last=null",
              "lora.dropout=0.1", "log.tensorboard=false"]
    full = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path / "a", *common)).run()

    part_cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path / "b", *common)
    part_cfg.train.max_steps = 6
    Trainer(part_cfg).run()
    resumed = Trainer(tiny_config("wan", tiny_wan, video_shards, tmp_path / "b", *common,
                                  "train.resume=auto")).run()
    assert sorted(resumed.losses) == list(range(7, 13))
    assert [resumed.losses[s] for s in range(7, 13)] == [full.losses[s] for s in range(7, 13)]
    a = load_file(str(full.final_checkpoint / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_checkpoint / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The metrics file holds each step exactly once.
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "b/runs/tiny-wan/logs/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_resume_ignores_partial_checkpoints_and_refuses_changed_settings(tiny_wan, video_shards, tmp_path):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=2",
                      "checkpoint.every_steps=2", "log.tensorboard=false")
    Trainer(cfg).run()
    layout = RunLayout.for_run(cfg.output_dir, cfg.run_name)
    # A crash during a save leaves a temp dir, or a step dir without its manifest (written last).
    (layout.checkpoints / ".tmp-step-0000004-dead").mkdir()
    half = layout.checkpoints / "step-0000003"
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"partial")
    assert layout.latest_checkpoint() == layout.checkpoint(2)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        Trainer(cfg)
    changed = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=4",
                          "train.resume=auto", "lora.rank=4")
    with pytest.raises(CheckpointError, match=r"lora: .*rank"):
        Trainer(changed)
    with pytest.raises(CheckpointError, match="no manifest.json"):
        read_manifest(half)
    # A file changed after saving is caught by its sha256.
    ok = layout.checkpoint(2)
    (ok / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="sha256"):
        read_manifest(ok)


def test_saved_adapter_loads_in_diffusers_and_peft_exactly(tiny_wan, video_shards, tmp_path):
    from diffusers import WanPipeline, WanTransformer3DModel
    from peft import PeftModel

    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=3",
                      "checkpoint.every_steps=3", "log.tensorboard=false", "lora.alpha=16")
    trainer = Trainer(cfg)
    ckpt = trainer.run().final_checkpoint
    trained = trainer.model.eval()
    x, t, e = torch.randn(1, 16, 3, 4, 4), torch.tensor([400.0]), torch.randn(1, 32, 32)
    with torch.no_grad():
        want = trained(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]

    pipe = WanPipeline.from_pretrained(str(tiny_wan))
    pipe.load_lora_weights(str(ckpt))  # no weight_name, no prefix: the defaults must just work
    lora_modules = {n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    expected = {k.split(".lora_A.")[0][len(DIFFUSERS_PREFIX):]
                for k in load_file(str(ckpt / "pytorch_lora_weights.safetensors")) if ".lora_A." in k}
    assert lora_modules == expected and len(expected) == len(trainer.adapted)
    with torch.no_grad():
        got = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
    assert torch.equal(got, want)  # alpha != rank survived via the safetensors metadata

    peft_model = PeftModel.from_pretrained(WanTransformer3DModel.from_pretrained(str(tiny_wan / "transformer")),
                                           str(ckpt))
    with torch.no_grad():
        got = peft_model(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
    assert torch.equal(got, want)
    assert all(k.startswith(PEFT_PREFIX) for k in load_file(str(ckpt / "adapter_model.safetensors")))


@pytest.mark.slow  # ~5 s of tiny training: outside the quick tier
def test_bad_samples_are_counted_and_threshold_fails(tiny_wan, video_shards, tmp_path):
    from training.data.synthetic import make_bad_shard

    bad = tmp_path / "bad" / "bad-000000.tar"
    bad.parent.mkdir()
    expected = make_bad_shard(bad, size=(32, 32), frames=9, kind="video")
    shards = [str(p) for p in sorted(video_shards.glob("*.tar"))] + [str(bad)]
    base = ["train.max_steps=14", "checkpoint.every_steps=1000", "log.tensorboard=false",
            "data.shuffle_buffer=0"]
    overrides = base + ["data.max_bad_fraction=0.5"]
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, *overrides)
    cfg.data.shards = shards
    result = Trainer(cfg).run()
    # Training may pass the bad shard more than once (epochs): every reason must be counted the
    # same whole number of passes.
    counts = dict(item.split("=") for item in result.skipped.split(": ", 1)[1].split(", "))
    passes = {int(counts[reason]) / n for reason, n in expected.items()}
    assert set(counts) == set(expected) and len(passes) == 1 and passes.pop() >= 1, result.skipped

    strict = tiny_config("wan", tiny_wan, video_shards, tmp_path, *base, "run_name=strict",
                         "data.max_bad_fraction=0.01")
    strict.data.shards = shards
    with pytest.raises(DataError) as e:
        Trainer(strict).run()
    for reason in expected:
        assert reason in str(e.value)


def test_gradient_checkpointing_gives_identical_losses(tiny_wan, video_shards, tmp_path):
    runs = {}
    for gc in (False, True):
        cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path / str(gc), "train.max_steps=3",
                          "checkpoint.every_steps=1000", "log.tensorboard=false",
                          f"model.gradient_checkpointing={str(gc).lower()}")
        runs[gc] = Trainer(cfg).run().losses
    for step in runs[False]:
        assert runs[True][step] == pytest.approx(runs[False][step], rel=1e-5, abs=1e-6)


def test_bf16_runs_on_cpu(tiny_wan, video_shards, tmp_path):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=2",
                      "checkpoint.every_steps=2", "log.tensorboard=false", "model.mixed_precision=bf16")
    trainer = Trainer(cfg)
    result = trainer.run()
    assert all(v == v for v in result.losses.values())
    assert trainer.pipe.transformer.proj_out.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.params)  # fp32 LoRA master weights


@pytest.mark.parametrize("override,error,match", [
    ("model.attention=xformers", RuntimeConfigError, "xformers needs a CUDA device"),
    ("model.mixed_precision=fp16", RuntimeConfigError, "fp16 needs CUDA"),
    ("data.frames=8", ConfigError, r"data.frames=8 must be 4k\+1"),
    ("data.width=36", ConfigError, "data.width=36 must be a multiple of 16"),
    ("model.family=sd3", Exception, "expects 'StableDiffusion3Pipeline'"),
])
def test_invalid_setups_fail_before_loading(tiny_wan, video_shards, tmp_path, override, error, match):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, override)
    with pytest.raises(error, match=match):
        Trainer(cfg)


def test_unknown_lora_target_is_an_error(tiny_wan, video_shards, tmp_path):
    from training.lora import LoraTargetError
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "lora.target_modules=[to_qq]")
    with pytest.raises(LoraTargetError, match=r"\['to_qq'\] match no module.*to_q"):
        Trainer(cfg).run()


def test_resume_refuses_a_changed_shard_directory(tiny_wan, video_shards, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(video_shards, data)
    cfg = tiny_config("wan", tiny_wan, data, tmp_path, "train.max_steps=2", "checkpoint.every_steps=2",
                      "log.tensorboard=false")
    Trainer(cfg).run()
    shutil.copy(next(data.glob("*.tar")), data / "zz-extra.tar")
    again = tiny_config("wan", tiny_wan, data, tmp_path, "train.max_steps=4", "train.resume=auto")
    with pytest.raises(CheckpointError, match=r"shard list changed \(3 shards then, 4 now\)"):
        Trainer(again).run()


def test_grad_accumulation_consumes_accum_batches_per_step(tiny_wan, video_shards, tmp_path):
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "train.max_steps=3", "train.batch_size=2",
                      "train.grad_accum=2", "checkpoint.every_steps=3", "log.tensorboard=false",
                      "data.shuffle_buffer=0")
    result = Trainer(cfg).run()
    assert "skipped 0 of 12 distinct samples read" in result.skipped
    state = json.loads((result.final_checkpoint / "train_state/rank-00000.json").read_text())
    assert state["data"] == {"epoch": 0, "position": 12, "yielded": 12}
    rec = json.loads((result.run_dir / "logs/metrics.jsonl").read_text().splitlines()[-1])
    assert rec["step"] == 3 and rec["samples_per_s"] > 0


def test_lora_parameter_keys_are_peft_state_dict_keys(tiny_wan):
    """Saved keys come from named parameters of the bare model: they must be peft's own keys."""
    from peft import get_peft_model_state_dict

    from training.lora import inject_lora, lora_named_parameters, peft_config
    from training.models import get_spec
    model = get_spec("wan").load_pipeline(str(tiny_wan), dtype=torch.float32).transformer
    inject_lora(model, peft_config(4, 4.0, 0.0, ["to_q", "to_v"]), seed=0)
    named = dict(lora_named_parameters(model))
    reference = get_peft_model_state_dict(model, adapter_name="default")
    assert set(named) == set(reference) and named
    assert all(torch.equal(named[k], reference[k]) for k in named)


def test_bf16_run_keeps_vae_fp32_and_kept_modules_fp32(tiny_wan, video_shards, tmp_path):
    """Per-component precision: bf16 denoiser and umT5, fp32 VAE, Wan's kept-fp32 modules fp32."""
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, "model.mixed_precision=bf16", "train.max_steps=1",
                      "checkpoint.every_steps=1", "log.tensorboard=false")
    trainer = Trainer(cfg)
    trainer._setup()
    pipe = trainer.pipe
    assert next(pipe.vae.parameters()).dtype == torch.float32
    assert next(pipe.text_encoder.parameters()).dtype == torch.bfloat16
    tr = pipe.transformer
    assert tr.scale_shift_table.dtype == torch.float32 and tr.blocks[0].attn1.to_q.base_layer.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in tr.named_parameters() if "lora_" in n)
    assert trainer.memory_plan is not None  # printed before loading
    plan = {c.name: c for c in trainer.memory_plan.components}
    loaded = sum(p.numel() * p.element_size() for p in pipe.vae.parameters())
    assert plan["vae"].bytes == loaded and plan["vae"].dtype == "fp32"


def test_wan_latents_are_the_posterior_mean(tiny_wan):
    """Wan's reference encodes to the posterior mean: no dependence on the noise generator."""
    from training.models import get_spec
    spec = get_spec("wan")
    pipe = spec.load_pipeline(tiny_wan)
    px = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        a = spec.encode_pixels(pipe, px, torch.Generator().manual_seed(0))
        b = spec.encode_pixels(pipe, px, torch.Generator().manual_seed(1))
        mean = pipe.vae.encode(px).latent_dist.mean
    assert torch.equal(a, b)
    m = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    assert torch.allclose(a, (mean - m) / s)
