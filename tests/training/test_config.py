from pathlib import Path

import pytest

from training.config import ConfigError, RunConfig, all_keys, describe_fields, load_config
from training.models import families, get_spec

from ..conftest import CONFIGS

SHIPPED = sorted(CONFIGS.glob("train/*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {"tiny-wan.yaml", "tiny-sd3.yaml", "wan2.2-ti2v-5b-lora.yaml", "sd3.5-medium-lora.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.model.family in families()
    spec = get_spec(cfg.model.family)
    # Shapes must suit the family's real geometry (from the VAE/patch factors of the released models).
    real_geometry = {"wan2.2-ti2v-5b-lora.yaml": (16, 4, 2), "wan2.1-t2v-1.3b-lora.yaml": (8, 4, 2),
                     "sd3.5-medium-lora.yaml": (8, 1, 2)}
    if path.name in real_geometry:
        from training.models.base import LatentGeometry
        s, t, p = real_geometry[path.name]
        assert LatentGeometry(s, t, (p, p)).check(cfg.data.width, cfg.data.height, cfg.data.frames) == []
        assert cfg.model.mixed_precision == "bf16" and cfg.model.gradient_checkpointing
    assert spec.modality in ("video", "image")


def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "train/tiny-wan.yaml",
                      ["optim.lr=1e-3", "train.max_steps=20", "lora.target_modules=[to_q,to_v]",
                       "optim.max_grad_norm=null", "model.gradient_checkpointing=true"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 20
    assert cfg.lora.target_modules == ["to_q", "to_v"]
    assert cfg.optim.max_grad_norm is None
    assert cfg.model.gradient_checkpointing is True


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "train/tiny-wan.yaml", ["optim.lrr=1e-3"])
    assert "unknown key 'optim.lrr'" in str(e.value)
    assert "did you mean 'optim.lr'" in str(e.value)


def test_unknown_top_level_section():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "train/tiny-wan.yaml", ["optimizer.lr=1"])
    assert "unknown key 'optimizer'" in str(e.value) and "'optim'" in str(e.value)


def test_bad_value_names_field_and_range():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "train/tiny-wan.yaml", ["lora.rank=0", "data.max_bad_fraction=1.5"])
    msg = str(e.value)
    assert "lora.rank" in msg and "greater than or equal to 1" in msg and "(got 0)" in msg
    assert "data.max_bad_fraction" in msg and "less than or equal to 1" in msg


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "train/tiny-wan.yaml", ["model.mixed_precision=fp8"])
    assert "model.mixed_precision" in str(e.value) and "'bf16'" in str(e.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIGS / "train/tiny-wan.yaml", ["optim.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(CONFIGS / "train/tiny-wan.yaml", ["seed.x=1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'model.path'"):
        load_config(None, base={"run_name": "x", "model": {"family": "wan"}, "data": {"shards": "d"}})


def test_every_field_is_documented():
    lines = describe_fields()
    leaves = [k for k in all_keys() if not any(o.startswith(k + ".") for o in all_keys())]
    assert len(lines) == len(leaves)
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # key + description
