"""The real-geometry tier: every shipped real config, on its model at the real widths, in bf16.

For each config in configs/train/ and configs/eval/ (parametrised over the folders, so a new
config is covered, or fails here asking for its model's configs), a model folder with the
released transformer/VAE/scheduler configs but one transformer block and one-layer text
encoders of the real output width (training.models.real_geometry) is trained for 2 steps,
sampled with the adapter, and evaluated (base + adapter) in the config's own precision. Only
sizes, steps and paths are overridden. Select it with ``-m realgeom``.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest
import torch
import yaml

from ..conftest import CONFIGS

pytestmark = pytest.mark.realgeom

TRAIN = sorted(p for p in (CONFIGS / "train").glob("*.yaml") if not p.name.startswith("tiny-"))
EVAL = sorted(p for p in (CONFIGS / "eval").glob("*.yaml") if not p.name.startswith("tiny-"))
#: CPU-sized shapes that keep each model's geometry rules (TI2V: multiples of 32; 4k+1 frames;
#: 9 frames because I3D needs at least 9)
SIZES = {"wan2.2-ti2v-5b": (64, 64, 9), "wan2.1-t2v-1.3b": (32, 32, 9), "sd3.5-medium": (32, 32, 1)}
PROMPTS = "a red circle moving left\n"
#: text tokens: the configs' own (umT5 512 for Wan), except SD3.5, whose 256 T5 tokens (plus 77
#: CLIP) pass through every MMDiT linear: bf16 GEMMs run ~8 GFLOP/s on a CPU without bf16 units
TEXT_LENGTH = {"sd3.5-medium": 32}
#: transformer blocks kept: SD3's last block is context-only (no to_add_out), so one block would
#: not carry every default LoRA target of the real 24-block model
LAYERS = {"sd3.5-medium": 2}


def _real_name(config: Path) -> str:
    from training.models.real_geometry import real_name_for
    return real_name_for(yaml.safe_load(config.read_text())["model"]["path"])


def _train_config_for(name: str) -> Path:
    matches = [p for p in TRAIN if _real_name(p) == name]
    assert matches, f"no shipped train config for {name}: the eval config's adapters cannot be trained"
    return matches[0]


def _text_length(name: str, section: str) -> list[str]:
    return [f"{section}.max_text_length={TEXT_LENGTH[name]}"] if name in TEXT_LENGTH else []


class RealModels:
    """Real-geometry model folders, data and runs, built once per session on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, Path] = {}
        self.data: dict[tuple[str, bool], Path] = {}
        self.runs: dict[Path, dict] = {}

    def model(self, name: str) -> Path:
        if name not in self.models:
            from training.models.real_geometry import make_real_geometry
            self.models[name] = make_real_geometry(name, self.root / "models" / name,
                                                   layers=LAYERS.get(name, 1))
        return self.models[name]

    def shards(self, name: str, heldout: bool = False) -> Path:
        key = (name, heldout)
        if key not in self.data:
            from training.data.synthetic import make_data
            w, h, f = SIZES[name]
            out = self.root / "data" / f"{name}{'-heldout' if heldout else ''}"
            kind = "video" if f > 1 else "image"
            make_data(kind, out, shards=1, samples_per_shard=4, seed=1 if heldout else 0, size=(w, h),
                      **({"frames": 17} if kind == "video" else {}))
            self.data[key] = out
        return self.data[key]

    def train(self, config: Path) -> dict:
        """Train ``config`` for 2 steps on its real-geometry model; timings and peak RSS recorded."""
        name = _real_name(config)
        if config not in self.runs:  # per config: two configs of one model are two runs
            from training.config import load_config
            from training.trainer import Trainer
            w, h, f = SIZES[name]
            cfg = load_config(config, [f"model.path={self.model(name)}", f"data.shards={self.shards(name)}",
                                       f"output_dir={self.root / 'runs' / config.stem}", f"data.width={w}", f"data.height={h}",
                                       f"data.frames={f}", "train.max_steps=2", "checkpoint.every_steps=2",
                                       "train.grad_accum=1", *_text_length(name, "data"),
                                       "optim.warmup_steps=0", "log.progress=false", "log.tensorboard=false",
                                       "log.every_steps=1"])
            start = time.perf_counter()
            result = Trainer(cfg).run()
            self.runs[config] = {"config": cfg, "result": result, "seconds": time.perf_counter() - start,
                                 "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        return self.runs[config]


@pytest.fixture(scope="session")
def real(tmp_path_factory) -> RealModels:
    return RealModels(tmp_path_factory.mktemp("realgeom"))


@pytest.mark.parametrize("config", TRAIN, ids=lambda p: p.stem)
def test_shipped_train_config_trains_in_its_precision(config, real):
    run = real.train(config)
    cfg, result = run["config"], run["result"]
    assert cfg.model.mixed_precision == "bf16", "the shipped real configs train in bf16"
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    body = json.loads((result.run_dir / "result.json").read_text())
    dtypes = body["param_dtypes"]
    assert set(dtypes["trainable"]) == {"fp32"}                      # LoRA masters
    assert dtypes["frozen"].get("bf16", 0) > dtypes["frozen"].get("fp32", 0)
    assert set(dtypes["kept_fp32_modules"]) <= {"fp32"}
    assert body["component_dtypes"]["vae"] == cfg.model.vae_dtype == "fp32"
    metrics = [json.loads(line) for line in (result.run_dir / "logs/metrics.jsonl").read_text().splitlines()]
    print(f"\n[realgeom] {config.stem}: {run['seconds']:.1f}s for 2 steps (step seconds "
          f"{[round(m['step_seconds'], 2) for m in metrics]}), peak RSS of this process so far {run['peak_rss_gib']:.2f} GiB")
    # The saved adapter loads back onto a fresh bf16 pipeline completely and changes its output.
    from training.adapters import load_adapter, verify_effect
    from training.models import get_spec
    from training.precision import ComponentDtypes
    spec = get_spec(cfg.model.family)
    pipe = spec.load_pipeline(cfg.model.path, dtype=ComponentDtypes.from_model_config(cfg.model))
    rep = load_adapter(pipe, result.final_checkpoint)
    assert rep.ok and not rep.missing and verify_effect(pipe, spec, rep) > 0


@pytest.mark.parametrize("config", TRAIN, ids=lambda p: p.stem)
def test_generate_with_the_adapter_in_bf16(config, real, tmp_path):
    from training.generate import generate
    name = _real_name(config)
    run = real.train(config)
    w, h, f = SIZES[name]
    prompts = [PROMPTS.strip()]
    common = dict(dtype="bf16", width=w, height=h, frames=f, steps=2, max_text_length=TEXT_LENGTH.get(name),
                  progress=False)
    # generate() loads the adapter completely and proves a fixed-seed forward changes before any
    # sample (else AdapterError); base vs adapter samples are compared by the eval test below.
    lora = generate(real.model(name), prompts, tmp_path / "lora", adapter=run["result"].final_checkpoint, **common)
    assert lora[0].adapter_sha256 and lora[0].adapter_scale == 1.0
    st = lora[0].settings
    assert st["dtypes"] == {"denoiser": "bf16", "vae": "fp32", "text": "bf16"}
    if f > 1:  # the model's own frame rate is written into the mp4
        import av
        want = {"wan2.2-ti2v-5b": 24, "wan2.1-t2v-1.3b": 16}[name]
        with av.open(lora[0].path) as c:
            assert c.streams.video[0].average_rate == want
        assert st["negative_prompt"], "Wan samples with its reference negative prompt"


@pytest.fixture(scope="session")
def metric_models(tmp_path_factory):
    from eval.metrics.tiny import make_tiny_metrics
    return make_tiny_metrics(tmp_path_factory.mktemp("realgeom-metrics"))


@pytest.mark.parametrize("config", EVAL, ids=lambda p: p.stem)
def test_shipped_eval_config_base_vs_adapter(config, real, metric_models, tmp_path):
    from cluster.eval import run as run_eval
    from eval.config import load_eval_config
    name = _real_name(config)
    run = real.train(_train_config_for(name))
    w, h, f = SIZES[name]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    overrides = [f"model.path={real.model(name)}", f"output_dir={tmp_path / 'evals'}", f"prompts.file={prompts}",
                 f"variants.adapters=[{run['result'].run_dir}]", "prompts.samples_per_prompt=1",
                 f"reference.shards={real.shards(name, heldout=True)}", "reference.max_samples=4",
                 f"sampling.width={w}", f"sampling.height={h}", f"sampling.frames={f}", "sampling.steps=2",
                 *_text_length(name, "sampling"),
                 "parallel.backend=none", "parallel.use_gpu=false", "metrics.device=auto", "metrics.bootstrap=10",
                 f"metrics.clip.path={metric_models['clip']}", f"metrics.fid.extractor={metric_models['inception']}"]
    if f > 1:
        overrides += [f"metrics.fvd.i3d_path={metric_models['i3d']}", "metrics.fvd.frames=9"]
    cfg = load_eval_config(config, overrides)
    body = run_eval(cfg, progress=False)
    variants = body["variants"]
    adapters = [v for n, v in variants.items() if n != "base"]
    assert "base" in variants and adapters
    for v in adapters:
        assert v["proof"]["effect_max_diff"] > 0 and v["proof"]["missing"] == 0
    # Same prompt and seed in every variant; the adapter's samples differ from the base's
    pixels: dict[str, dict[str, str]] = {}
    for r in body["samples"]:
        pixels.setdefault(r["sample_id"], {})[r["variant"]] = r["output_sha256"]
    assert all(len(set(by_variant.values())) == len(by_variant) == len(variants) for by_variant in pixels.values())
    info = json.loads((cfg.out_dir / "eval.json").read_text())
    assert info["sampling"]["dtypes"]["denoiser"] == cfg.model.dtype == "bf16"
    assert info["sampling"]["dtypes"]["vae"] == "fp32"
    if f > 1:
        assert info["sampling"]["fps"] == {"wan2.2-ti2v-5b": 24, "wan2.1-t2v-1.3b": 16}[name]
    assert variants["base"]["metrics"], "metrics ran on the bf16 samples"


@pytest.mark.parametrize("config", TRAIN, ids=lambda p: p.stem)
def test_precompute_at_real_widths_writes_what_it_announced(config, real, tmp_path):
    """The latent cache of a shipped config on its real-width model in the config's own dtypes:
    the bytes announced before starting are the bytes written (training from a cache is tested
    on the tiny models, tests/training/cache)."""
    import tarfile

    from safetensors.torch import load as load_tensors

    from training.cache.precompute import plan_precompute, run_local
    from training.config import load_config
    name = _real_name(config)
    w, h, f = SIZES[name]
    cache = tmp_path / "cache"
    cfg = load_config(config, [f"model.path={real.model(name)}", f"data.shards={real.shards(name)}",
                               f"output_dir={tmp_path}", f"data.width={w}", f"data.height={h}", f"data.frames={f}",
                               *_text_length(name, "data"), f"data.cache={cache}"])
    plan = plan_precompute(cfg)
    assert run_local(plan, device="cpu", progress=False)["encoded"] == 4
    with tarfile.open(next((cache / "shards").glob("*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".safetensors"))
        tensors = load_tensors(tar.extractfile(member).read())
    assert plan.bytes_per_sample == sum(t.numel() * t.element_size() for t in tensors.values())
    assert {str(t.dtype) for k, t in tensors.items() if k.startswith("cond.")} == {"torch.bfloat16"}
