"""The lorabench command in-process: exit codes and messages users see."""


import pytest

from cluster.cli import EXIT_USER_ERROR, main

from ..conftest import CONFIGS


def test_help_config_lists_keys(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr" in out and "data.max_bad_fraction" in out


def test_bad_key_exits_with_hint(capsys):
    assert main(["train", str(CONFIGS / "train/tiny-wan.yaml"), "optim.lrr=1e-3"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "unknown key 'optim.lrr'" in err and "did you mean 'optim.lr'" in err


def test_missing_model_folder_names_the_fix(capsys, tmp_path):
    code = main(["train", str(CONFIGS / "train/tiny-wan.yaml"), f"model.path={tmp_path / 'nope'}"])
    assert code == EXIT_USER_ERROR
    assert "lorabench make-tiny --family wan" in capsys.readouterr().err


def test_make_tiny_make_data_train_generate(tmp_path, capsys):
    model, data = tmp_path / "m", tmp_path / "d"
    assert main(["make-tiny", "--family", "wan", "--out", str(model)]) == 0
    assert main(["make-data", "--kind", "video", "--out", str(data), "--shards", "1",
                 "--samples-per-shard", "4", "--size", "32x32", "--frames", "9"]) == 0
    assert main(["train", str(CONFIGS / "train/tiny-wan.yaml"), f"model.path={model}",
                 f"data.shards={data}", f"output_dir={tmp_path / 'runs'}", "train.max_steps=2",
                 "checkpoint.every_steps=2", "log.progress=false", "train.batch_size=2"]) == 0
    ckpt = tmp_path / "runs/tiny-wan/checkpoints/step-0000002"
    assert (ckpt / "manifest.json").is_file()
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left\n")
    assert main(["generate", "--model", str(model), "--adapter", str(ckpt), "--prompts", str(prompts),
                 "--out", str(tmp_path / "s"), "--width", "32", "--height", "32", "--frames", "9",
                 "--steps", "2"]) == 0
    assert (tmp_path / "s/sample-0000.mp4").is_file()
    assert "1 samples in" in capsys.readouterr().out


def test_adapter_subcommands_are_wired(tmp_path, capsys):
    from training.models import get_spec
    model = get_spec("wan").make_tiny(tmp_path / "m")
    assert main(["adapter", "inspect", str(tmp_path / "missing")]) == EXIT_USER_ERROR
    assert "missing" in capsys.readouterr().err
    assert main(["adapter", "verify", str(tmp_path / "missing"), "--model", str(model)]) == EXIT_USER_ERROR
    assert main(["adapter"]) == 2


def test_eval_commands_exit_with_named_errors(capsys, tmp_path):
    assert main(["eval", "--help-config"]) == 0
    assert "metrics.fvd.i3d_path" in capsys.readouterr().out
    code = main(["eval", str(CONFIGS / "eval/tiny-wan.yaml"), f"model.path={tmp_path / 'nope'}", "--local"])
    assert code == EXIT_USER_ERROR
    assert "lorabench make-tiny --family wan" in capsys.readouterr().err
    assert main(["eval", "metrics", "--from", str(tmp_path)]) == EXIT_USER_ERROR
    assert "is not a finished eval folder" in capsys.readouterr().err


def test_eval_in_process_and_metrics_from_dir(tiny_wan, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moving left\n")
    common = [f"model.path={tiny_wan}", f"output_dir={tmp_path}", f"prompts.file={prompts}", "variants.adapters=[]",
              "reference.shards=null", "metrics.clip.path=null", "metrics.fvd.i3d_path=null", "sampling.steps=2",
              "metrics.bootstrap=10", "prompts.samples_per_prompt=2"]
    assert main(["eval", str(CONFIGS / "eval/tiny-wan.yaml"), *common, "--local"]) == 0
    out = capsys.readouterr().out
    assert "eval tiny-wan: 2 samples, 1 variant(s)" in out and "sharpness=" in out and "fvd: skipped" in out
    assert main(["eval", "metrics", "--from", str(tmp_path / "tiny-wan"), "metrics.sharpness=false"]) == 0
    assert "sharpness=" not in capsys.readouterr().out


def test_metrics_placement_is_decided_before_generation(tiny_wan, tmp_path):
    """A head node without a GPU: metrics go to a GPU Ray task, or the eval stops before any sample."""
    from cluster.eval import metrics_placement, run
    from eval.config import load_eval_config
    from training.config import ConfigError

    def cfg(*o):
        return load_eval_config(CONFIGS / "eval" / "tiny-wan.yaml", [
            f"model.path={tiny_wan}", f"output_dir={tmp_path}", "variants.adapters=[]", "reference.shards=null",
            "metrics.clip.path=null", "metrics.fvd.i3d_path=null", *o])

    assert metrics_placement(cfg("metrics.device=cuda", "parallel.use_gpu=true"), driver_has_gpu=False) == "gpu-task"
    assert metrics_placement(cfg("metrics.device=auto", "parallel.use_gpu=true"), driver_has_gpu=False) == "gpu-task"
    assert metrics_placement(cfg("metrics.device=cuda"), driver_has_gpu=True) == "driver"
    assert metrics_placement(cfg("metrics.device=auto"), driver_has_gpu=False) == "driver"
    with pytest.raises(ConfigError, match="metrics.device=cuda, but this driver has no GPU"):
        run(cfg("metrics.device=cuda", "parallel.backend=none"), progress=False)
    assert not (tmp_path / "tiny-wan" / "samples").exists()  # nothing was generated


def test_train_plan_prints_the_memory_plan_without_loading(tiny_wan, tmp_path, capsys):
    # overrides after an option are overrides too (the README's `train CONFIG --workers 2 key=value`)
    config = CONFIGS / "train/tiny-wan.yaml"
    code = main(["train", str(config), "--plan", f"model.path={tiny_wan}",
                 "model.mixed_precision=bf16", f"output_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0 and "memory plan" in out and "transformer" in out and "vae" in out
    assert "with checkpointing" in out and "peak on the accelerator" in out
    assert not (tmp_path / "tiny-wan").exists()  # nothing trained, no run folder
    with pytest.raises(SystemExit):  # anything else after an option is still refused
        main(["train", str(config), "--plan", "not-an-override"])
