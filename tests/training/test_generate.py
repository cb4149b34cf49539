"""Fixed-seed sampling and the strict adapter path."""

from pathlib import Path

import numpy as np
import pytest

from training.adapters import AdapterError
from training.generate import generate, read_prompts
from training.seeding import sample_seed
from training.trainer import Trainer

from ..conftest import tiny_config

PROMPTS = ["a red circle moving left", "a blue square moving up"]
SHAPE = dict(width=32, height=32, frames=9, steps=3, guidance=1.0, max_text_length=32, progress=False)


def frames(path: str) -> np.ndarray:
    import av
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def trained_wan(tiny_wan, video_shards, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("gen-run")
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp, "train.max_steps=5", "checkpoint.every_steps=5",
                      "log.tensorboard=false")
    return Trainer(cfg).run().final_checkpoint


def test_same_seed_same_video_and_lora_changes_it(tiny_wan, trained_wan, tmp_path):
    a = generate(tiny_wan, PROMPTS, tmp_path / "a", seed=7, **SHAPE)
    b = generate(tiny_wan, PROMPTS, tmp_path / "b", seed=7, **SHAPE)
    lora = generate(tiny_wan, PROMPTS, tmp_path / "lora", seed=7, adapter=trained_wan, **SHAPE)
    assert [r.seed for r in a] == [sample_seed(7, 0), sample_seed(7, 1)] == [r.seed for r in lora]
    for ra, rb, rl in zip(a, b, lora):
        assert Path(ra.path).name == Path(rl.path).name and ra.path.endswith(".mp4")
        assert ra.output_sha256 == rb.output_sha256 != rl.output_sha256
        fa = frames(ra.path)
        assert fa.shape == (9, 32, 32, 3)
        assert np.array_equal(fa, frames(rb.path))
        assert np.abs(fa.astype(float) - frames(rl.path)).mean() > 0.5
    assert lora[0].adapter_sha256 and len(lora[0].adapter_sha256) == 64
    assert (tmp_path / "lora" / "samples.jsonl").read_text().count("\n") == 2


def test_any_layout_applies_identically(tiny_wan, trained_wan, tmp_path):
    # The PEFT-layout file: diffusers alone would warn and load nothing; our loader normalises it.
    ckpt = generate(tiny_wan, PROMPTS[:1], tmp_path / "a", adapter=trained_wan, **SHAPE)
    peft = generate(tiny_wan, PROMPTS[:1], tmp_path / "b", adapter=trained_wan / "adapter_model.safetensors", **SHAPE)
    assert ckpt[0].output_sha256 == peft[0].output_sha256
    assert ckpt[0].adapter_rank == "8" and ckpt[0].adapter_alpha == "8"


def test_adapter_without_effect_or_missing_fails(tiny_wan, trained_wan, tmp_path):
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(trained_wan / "pytorch_lora_weights.safetensors"))
    zero = {k: (v.zero_() if ".lora_B." in k else v) for k, v in tensors.items()}
    save_file(zero, str(tmp_path / "zero.safetensors"))
    with pytest.raises(AdapterError, match="no effect"):
        generate(tiny_wan, PROMPTS[:1], tmp_path / "z", adapter=tmp_path / "zero.safetensors", **SHAPE)
    with pytest.raises(AdapterError, match="missing"):
        generate(tiny_wan, PROMPTS[:1], tmp_path, adapter=tmp_path / "missing", **SHAPE)


def test_adapter_for_another_model_fails(tiny_sd3, trained_wan, tmp_path):
    with pytest.raises(AdapterError) as e:
        generate(tiny_sd3, PROMPTS[:1], tmp_path, adapter=trained_wan, **dict(SHAPE, frames=1))
    assert "blocks.0.attn1.to_q" in str(e.value)  # the table names what did not match


def test_sd3_writes_png(tiny_sd3, tmp_path):
    recs = generate(tiny_sd3, PROMPTS, tmp_path, seed=0, **dict(SHAPE, frames=1))
    from PIL import Image
    assert [Image.open(r.path).size for r in recs] == [(32, 32), (32, 32)]


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("# comment\na red circle\n\n a blue square \n")
    assert read_prompts(txt) == ["a red circle", "a blue square"]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "x"}\n{"text": "y"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: expected a JSON object with a \"prompt\""):
        read_prompts(jl)
    with pytest.raises(FileNotFoundError, match="prompts file not found"):
        read_prompts(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_text("\n# only comments\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_bad_sampling_shape(tiny_wan, tmp_path):
    with pytest.raises(ValueError, match="4k\\+1"):
        generate(tiny_wan, PROMPTS, tmp_path, **dict(SHAPE, frames=8))


def test_bf16_generation_with_an_adapter_records_its_settings(tiny_wan, trained_wan, tmp_path):
    """generate in the dtypes real models run in (bf16 denoiser, fp32 VAE), card defaults filled in."""
    import av

    from training.models.wan import WAN_NEGATIVE_PROMPT
    shape = dict(SHAPE, guidance=2.0)  # CFG on: the negative prompt is used
    recs = generate(tiny_wan, PROMPTS[:1], tmp_path, adapter=trained_wan, dtype="bf16", **shape)
    st = recs[0].settings
    assert st["dtypes"] == {"denoiser": "bf16", "vae": "fp32", "text": "bf16"}
    # Unset values come from the model card (the tiny Wan2.1-layout folder: the T2V-14B defaults)
    assert st["negative_prompt"] == WAN_NEGATIVE_PROMPT and st["shift"] == 5.0 and st["fps"] == 16
    assert "Wan2.1" in st["defaults_source"]
    with av.open(recs[0].path) as c:
        assert c.streams.video[0].average_rate == 16
    fp32 = generate(tiny_wan, PROMPTS[:1], tmp_path / "fp32", adapter=trained_wan, dtype="fp32", **shape)
    assert fp32[0].output_sha256 != recs[0].output_sha256  # bf16 really ran


def test_negative_prompt_over_the_limit_is_refused(tiny_wan, tmp_path):
    from training.config import ConfigError
    with pytest.raises(ConfigError, match=r"the negative prompt has \d+ tokens for tokenizer \(limit 32\): the pipeline would cut it"):
        generate(tiny_wan, PROMPTS[:1], tmp_path, negative_prompt="red " * 40, **dict(SHAPE, guidance=3.0))


def test_sd3_bf16_with_an_fp32_vae_decodes(tiny_sd3, tmp_path):
    """StableDiffusion3Pipeline hands bf16 latents to the VAE: the fp32 VAE must accept them."""
    recs = generate(tiny_sd3, PROMPTS[:1], tmp_path, dtype="bf16", **dict(SHAPE, frames=1))
    assert recs[0].settings["dtypes"] == {"denoiser": "bf16", "vae": "fp32", "text": "bf16"}
    assert Path(recs[0].path).suffix == ".png"


def test_cuda_without_a_gpu_names_every_key_that_asks_for_it(tiny_wan, tmp_path):
    import torch

    from training.runtime import RuntimeConfigError
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeConfigError, match="sampling.device=cuda or parallel.use_gpu=true"):
        generate(tiny_wan, PROMPTS[:1], tmp_path, device="cuda", **SHAPE)


def test_offload_without_a_gpu_is_a_clear_error(tiny_wan, tmp_path):
    from training.runtime import RuntimeConfigError
    with pytest.raises(RuntimeConfigError, match="CPU offload .* needs a CUDA device .* drop the offload option"):
        generate(tiny_wan, PROMPTS[:1], tmp_path, offload=True, device="cpu", **SHAPE)


def test_long_prompts_follow_one_policy(tiny_wan, tmp_path):
    """A prompt over the encoder limit is refused, kept and recorded, or left out: never cut silently."""
    import json

    from training.config import ConfigError
    prompts = ["a red circle", "red " * 40, "a blue square"]  # prompt 2: ~41 tokens > 32
    with pytest.raises(ConfigError, match=r"prompt 2 \('red red .*'\.\.\.\) has \d+ tokens for tokenizer "
                                          r"\(limit 32\): the pipeline would cut it silently"):
        generate(tiny_wan, prompts, tmp_path / "error", **SHAPE)
    assert not (tmp_path / "error").exists()
    kept = generate(tiny_wan, prompts, tmp_path / "truncate", long_prompts_policy="truncate", **SHAPE)
    assert [r.prompt_truncated for r in kept] == [False, True, False]
    lines = [json.loads(x) for x in (tmp_path / "truncate/samples.jsonl").read_text().splitlines()]
    assert [x["prompt_truncated"] for x in lines] == [False, True, False]
    skipped = generate(tiny_wan, prompts, tmp_path / "skip", long_prompts_policy="skip", **SHAPE)
    # The others keep their index and seed: sample 2 is the same with or without the long prompt.
    assert [r.index for r in skipped] == [0, 2]
    assert [r.output_sha256 for r in skipped] == [kept[0].output_sha256, kept[2].output_sha256]
