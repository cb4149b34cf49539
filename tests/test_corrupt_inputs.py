"""A corrupt-input corpus at the command line: every case is one message naming the problem
and exit code 2, and nothing is written outside the sandbox folder it runs in.

Broken media and shards are in tests/training/data/test_corrupt_corpus.py and test_bad_shards.py,
broken adapters in tests/training/adapters/ (coverage, consistency, integrity); this module
covers configs, command lines, prompt files and run folders, through ``lorabench`` itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest

from cluster.cli import EXIT_USER_ERROR, main

from .conftest import CONFIGS, REPO

TINY = (CONFIGS / "train/tiny-wan.yaml").read_text()


def _config(text: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        (root / "c.yaml").write_text(text)
        return ["train", "c.yaml"]
    return setup


def _train(*overrides: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        (root / "c.yaml").write_text(TINY)
        return ["train", "c.yaml", *overrides]
    return setup


def _blocked_output(root: Path) -> list[str]:
    (root / "c.yaml").write_text(TINY)
    (root / "runs").write_text("a file where the output folder should be")
    return ["train", "c.yaml"]


def _config_is_a_folder(root: Path) -> list[str]:
    (root / "c.yaml").mkdir()
    return ["train", "c.yaml"]


def _binary_config(root: Path) -> list[str]:
    (root / "c.yaml").write_bytes(b"\xff\xfe\x00binary")
    return ["train", "c.yaml"]


# (case id, setup -> argv, phrase the one message must contain)
CASES = [
    ("repeated-key", _config(TINY.replace("  rank: 8\n", "  rank: 8\n  rank: 4\n")),
     "c.yaml:16: key 'rank' is repeated (first at line 15)"),
    ("bool-for-number", _config(TINY.replace("rank: 8", "rank: true")), "lora.rank: a boolean is not a number"),
    ("empty-targets", _train("lora.target_modules=[]"), "lora.target_modules: an empty list means nothing here"),
    ("empty-shards", _train("data.shards=[]"), "data.shards: an empty list means nothing here"),
    ("nan-lr", _config(TINY.replace("lr: 2.0e-3", "lr: .nan")), "optim.lr: Input should be a finite number"),
    ("inf-override", _train("train.logit_std=.inf"), "train.logit_std: Input should be a finite number"),
    ("unknown-family", _train("model.family=flux"), "model.family: 'flux' is not a registered model family"),
    ("unknown-key", _train("optim.lrr=1"), "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("not-a-mapping", _config("- a\n- b\n"), "top level must be a mapping of sections, got list"),
    ("invalid-yaml", _config("model: [\n"), "c.yaml: not valid YAML"),
    ("config-is-a-folder", _config_is_a_folder, "config file not found: c.yaml"),
    ("binary-config", _binary_config, "c.yaml: cannot read it as text"),
    ("missing-config", lambda root: ["train", "nope.yaml"], "config file not found: nope.yaml"),
    ("output-under-a-file", _blocked_output, "output_dir='runs' is a file, not a folder"),
    ("bad-override-syntax", _train("optim.lr"), "override 'optim.lr' is not of the form key=value"),
    ("model-not-a-folder", _train("model.path=nowhere"), "nowhere is not a diffusers model folder"),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _repo_status() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("case,setup,phrase", CASES, ids=[c[0] for c in CASES])
def test_broken_input_is_one_message_and_exit_2(case, setup, phrase, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path)
    before, repo_before = _tree(tmp_path), _repo_status()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse refuses its own way, with the same exit code
        code = e.code
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert phrase in err, err
    assert "Traceback" not in err
    assert _tree(tmp_path) == before  # refused before anything was written
    assert _repo_status() == repo_before


# ----------------------------------------------------------------------------- generate


@pytest.fixture()
def prompts(tmp_path) -> Path:
    p = tmp_path / "p.txt"
    p.write_text("a red circle\n")
    return p


GENERATE_CASES = [
    ("frames-not-4k+1", ["--frames", "8"], "invalid sampling shape: --frames=8 must be 4k+1"),
    ("empty-prompts", ["--prompts", "empty.txt"], "empty.txt holds no prompts"),
    ("binary-prompts", ["--prompts", "binary.txt"], "binary.txt: not UTF-8 text"),
    ("bad-jsonl-prompts", ["--prompts", "bad.jsonl"], "bad.jsonl:1: expected a JSON object with a \"prompt\" field"),
    ("out-under-a-file", ["--out", "blocker/out"], "--out='blocker/out' is under"),
    ("missing-adapter", ["--adapter", "none.safetensors"], "none.safetensors"),
]


@pytest.mark.parametrize("case,extra,phrase", GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_generate_refuses_broken_input_before_writing(case, extra, phrase, tiny_wan, prompts, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\xfa")
    (tmp_path / "bad.jsonl").write_text("[1, 2]\n")
    (tmp_path / "blocker").write_text("")
    args = {"--model": str(tiny_wan), "--prompts": str(prompts), "--out": "out", "--width": "32", "--height": "32",
            "--frames": "9", "--steps": "1"}
    for k, v in zip(extra[::2], extra[1::2]):
        args[k] = v
    before = _tree(tmp_path)
    code = main(["generate", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert phrase in err and "Traceback" not in err, err
    assert _tree(tmp_path) == before


# ----------------------------------------------------------------------------- run folders


def test_a_damaged_metrics_log_in_the_middle_is_named_with_its_line(tiny_wan, video_shards, tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(TINY)
    common = ["train", "c.yaml", f"model.path={tiny_wan}", f"data.shards={video_shards}", "train.max_steps=2",
              "checkpoint.every_steps=2", "log.progress=false", "log.tensorboard=false", "train.batch_size=2"]
    assert main(common) == 0
    log = tmp_path / "runs/tiny-wan/logs/metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0][:10], *lines[1:]]) + "\n")  # damage where no crash can
    assert main([*common, "train.max_steps=3", "train.resume=auto"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "runs/tiny-wan/logs/metrics.jsonl:1: not valid JSON" in err and "Traceback" not in err


def test_a_damaged_eval_record_file_is_named_with_its_line(tiny_wan, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["eval", str(CONFIGS / "eval/tiny-wan.yaml"), f"model.path={tiny_wan}", f"output_dir={tmp_path}",
                 f"prompts.file={prompts}", "variants.adapters=[]", "reference.shards=null", "metrics.clip.path=null",
                 "metrics.fvd.i3d_path=null", "sampling.steps=1", "metrics.bootstrap=0", "--local"]) == 0
    records = tmp_path / "tiny-wan/records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join([*lines[:-1], lines[-1][:7]]) + "\n")  # a cut last record
    capsys.readouterr()
    assert main(["eval", "metrics", "--from", str(tmp_path / "tiny-wan")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{records}:{len(lines)}: not valid JSON" in err and "Traceback" not in err, err
