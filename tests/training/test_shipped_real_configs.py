"""The shipped real configs against the released models' own settings (configs only, no weights)."""

import pytest
import yaml

from ..conftest import CONFIGS


@pytest.fixture(scope="module")
def config_folders(tmp_path_factory):
    from training.models.real_configs import write_config_folder
    root = tmp_path_factory.mktemp("configs-only")
    return {n: write_config_folder(n, root / n) for n in ("wan2.2-ti2v-5b", "wan2.1-t2v-1.3b", "sd3.5-medium")}


def test_ti2v_train_config_is_at_the_models_native_geometry(config_folders):
    from training.config import load_config
    from training.models import get_spec
    cfg = load_config(CONFIGS / "train" / "wan2.2-ti2v-5b-lora.yaml",
                      [f"model.path={config_folders['wan2.2-ti2v-5b']}"])
    # wan/configs/wan_ti2v_5B.py: frame_num 121, sample_fps 24; 1280*704
    assert (cfg.data.width, cfg.data.height, cfg.data.frames, cfg.data.fps) == (1280, 704, 121, 24)
    assert not get_spec("wan").geometry(cfg.model.path).check(1280, 704, 121)
    assert (cfg.model.mixed_precision, cfg.model.vae_dtype) == ("bf16", "fp32")
    wan21 = load_config(CONFIGS / "train" / "wan2.1-t2v-1.3b-lora.yaml", [])
    assert (wan21.data.width, wan21.data.height, wan21.data.frames, wan21.data.fps) == (832, 480, 81, 16)


@pytest.mark.parametrize("name, want", [
    # (width, height, frames, fps, steps, guidance, shift)
    ("wan2.2-ti2v-5b", (1280, 704, 121, 24, 50, 5.0, 5.0)),      # wan/configs/wan_ti2v_5B.py
    ("wan2.1-t2v-1.3b", (832, 480, 81, 16, 50, 6.0, 8.0)),       # Wan2.1 README, T2V-1.3B
    ("sd3.5-medium", (1024, 1024, 1, 1, 40, 4.5, 3.0)),          # model card; the scheduler's shift
])
def test_eval_configs_sample_at_the_model_card_settings(name, want, config_folders, tmp_path):
    from eval.config import load_eval_config
    from eval.generation import resolve_sampling
    from training.models import spec_for_folder
    from training.models.real_geometry import real_name_for
    from training.models.wan import WAN_NEGATIVE_PROMPT
    shipped = [p for p in (CONFIGS / "eval").glob("*.yaml") if not p.name.startswith("tiny-")
               and real_name_for(yaml.safe_load(p.read_text())["model"]["path"]) == name]
    assert len(shipped) == 1, f"one shipped eval config for {name}"
    folder = config_folders[name]
    cfg = load_eval_config(shipped[0], [f"model.path={folder}", f"output_dir={tmp_path}"])
    resolved, settings = resolve_sampling(cfg, spec_for_folder(str(folder)))
    s = resolved.sampling
    assert (s.width, s.height, s.frames, s.fps, s.steps, s.guidance, s.shift) == want
    assert settings.dtypes.to_dict() == {"denoiser": "bf16", "vae": "fp32", "text": "bf16"}
    assert s.negative_prompt == (WAN_NEGATIVE_PROMPT if name.startswith("wan") else "")


@pytest.mark.parametrize("config", sorted(p for p in (CONFIGS / "train").glob("*.yaml") if not p.name.startswith("tiny-")),
                         ids=lambda p: p.stem)
def test_memory_claims_in_config_comments_are_the_plans(config, config_folders):
    """A config's "~X GiB peak" comment is what `lorabench train CONFIG --plan` computes, not a guess."""
    import re

    from training.config import load_config
    from training.memory_plan import plan_training
    from training.models.real_geometry import real_name_for
    text = config.read_text()
    claims = re.findall(r"~(\d+\.\d) GiB peak", text)
    assert claims, f"{config.name}: no '~X GiB peak' figure from the memory plan in its header"
    name = real_name_for(yaml.safe_load(text)["model"]["path"])
    cfg = load_config(config, [f"model.path={config_folders[name]}"])
    assert float(claims[0]) == round(plan_training(cfg).accelerator_peak() / 2**30, 1)
    offload = re.findall(r"~(\d+\.\d) GiB with model.offload_encoders=true", text)
    if offload:
        cfg = load_config(config, [f"model.path={config_folders[name]}", "model.offload_encoders=true"])
        assert float(offload[0]) == round(plan_training(cfg).accelerator_peak() / 2**30, 1)
