"""Config values YAML and pydantic would accept silently are refused, each naming its field."""

from pathlib import Path

import pytest

from training.config import ConfigError, load_config
from training.outputs import OutputDirError, check_writable_dir

from ..conftest import CONFIGS

TINY = CONFIGS / "train/tiny-wan.yaml"


def _error(*overrides: str, path: Path = TINY) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value)


def test_a_repeated_yaml_key_is_refused_with_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("run_name: a\nmodel:\n  path: /m\n  family: wan\n  path: /other\ndata:\n  shards: /d\n")
    msg = _error(path=cfg)
    assert f"{cfg}:5: key 'path' is repeated (first at line 3)" in msg
    # Same keys in different sections are not repeats.
    ok = tmp_path / "ok.yaml"
    ok.write_text("run_name: a\nmodel:\n  path: /m\ndata:\n  shards: /d\n  fps: 16\ntrain:\n  device: cpu\n"
                  "parallel:\n  use_gpu: false\nlog:\n  every_steps: 2\ncheckpoint:\n  every_steps: 2\n")
    assert load_config(ok).checkpoint.every_steps == 2


def test_a_repeated_key_in_an_eval_config_is_refused(tmp_path):
    from eval.config import load_eval_config
    cfg = tmp_path / "e.yaml"
    cfg.write_text((CONFIGS / "eval/tiny-wan.yaml").read_text() + "name: again\n")
    with pytest.raises(ConfigError, match=r"key 'name' is repeated"):
        load_eval_config(cfg)


@pytest.mark.parametrize("override,field", [
    ("lora.rank=true", "lora.rank"),            # pydantic alone trains rank 1
    ("deepspeed.zero_stage=true", "deepspeed.zero_stage"),
    ("optim.betas=[true,0.9]", "optim.betas"),
    ("train.max_steps=false", "train.max_steps"),
])
def test_booleans_are_not_numbers(override, field):
    assert f"{field}: a boolean is not a number here" in _error(override)


def test_booleans_still_set_boolean_fields():
    cfg = load_config(TINY, ["model.gradient_checkpointing=true", "log.progress=false"])
    assert cfg.model.gradient_checkpointing is True and cfg.log.progress is False


def test_a_yaml_boolean_in_the_file_is_refused_too(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY.read_text().replace("rank: 8", "rank: yes"))
    assert "rank: 8" in TINY.read_text()
    assert "lora.rank: a boolean is not a number here" in _error(path=cfg)


@pytest.mark.parametrize("override,field", [
    ("lora.target_modules=[]", "lora.target_modules"),  # trained the defaults while recording []
    ("data.shards=[]", "data.shards"),
])
def test_empty_lists_that_mean_nothing_are_refused(override, field):
    assert f"{field}: an empty list means nothing here" in _error(override)


@pytest.mark.parametrize("override,field", [
    ("optim.lr=.nan", "optim.lr"), ("train.logit_mean=.inf", "train.logit_mean"),
    ("train.logit_std=nan", "train.logit_std"), ("optim.betas=[0.9,.nan]", "optim.betas.1"),
    ("optim.max_grad_norm=.inf", "optim.max_grad_norm"),
])
def test_non_finite_floats_are_refused(override, field):
    assert f"{field}: Input should be a finite number" in _error(override)


def test_eval_config_has_the_same_rules():
    from eval.config import load_eval_config
    cases = {"sampling.steps=true": "sampling.steps: a boolean", "variants.scales=[.inf]": "variants.scales.0",
             "reference.shards=[]": "reference.shards: an empty list"}
    for override, phrase in cases.items():
        with pytest.raises(ConfigError) as e:
            load_eval_config(CONFIGS / "eval/tiny-wan.yaml", [override])
        assert phrase in str(e.value), override


def test_an_unregistered_family_is_a_config_error_naming_the_choices():
    msg = _error("model.family=wna")
    assert "model.family: 'wna' is not a registered model family (did you mean 'wan'?); registered: sd3, wan" in msg


def test_every_shipped_config_still_validates():
    from eval.config import load_eval_config
    for path in sorted(CONFIGS.glob("train/*.yaml")):
        load_config(path)
    for path in sorted(CONFIGS.glob("eval/*.yaml")):
        load_eval_config(path)


# ----------------------------------------------------------------------------- output folders


def test_output_dir_under_a_file_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError) as e:
        check_writable_dir(blocker / "runs" / "r", "output_dir")
    assert str(e.value) == (f"output_dir={str(blocker / 'runs' / 'r')!r} is under {blocker}, which is a file, "
                            "not a folder: choose another output_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # the check creates nothing


def test_unwritable_output_dir_is_named():
    # /sys is read-only even for root (os.access says yes to root; the probe file does not).
    with pytest.raises(OutputDirError, match=r"output_dir='/sys/lorabench-runs': cannot write into /sys"):
        check_writable_dir("/sys/lorabench-runs", "output_dir")


def test_train_preflight_refuses_the_output_dir_before_any_model_loads(tmp_path, video_shards):
    from training.preflight import preflight
    blocker = tmp_path / "f"
    blocker.write_text("")
    # model.path does not exist: had the model been loaded first, this would be a model-folder error.
    cfg = load_config(TINY, [f"model.path={tmp_path / 'no-model'}", f"data.shards={video_shards}",
                             f"output_dir={blocker}"])
    with pytest.raises(OutputDirError, match=r"output_dir=.* is a file, not a folder"):
        preflight(cfg, 0, 1)
