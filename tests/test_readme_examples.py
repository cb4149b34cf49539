"""The README's commands, read from README.md itself, so an example that drifts fails here.

Every command in a fenced block is parsed by the real parser and its config validated
(placeholders such as CONFIG become a shipped config); the tiny ones are also run as written,
in a sandbox folder laid out as the README and the tiny config's header say.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from .conftest import CONFIGS, REPO

PROGRAMS = ("lorabench ", "python -m ", "torchrun ", "ray job submit ")


def readme_commands() -> list[str]:
    """Commands in README.md's fenced blocks: continuations joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if line.startswith(PROGRAMS):
                commands.append(" ".join(line.split()))
    return commands


def _placeholders(argv: list[str], config: str) -> list[str]:
    return [config if a == "CONFIG" else a for a in argv if a != "..."]


def _python_module_argv(cmd: str) -> list[str]:
    """`ray job submit ... -- python -m X` and `torchrun ... -m training` -> `python -m X ...` argv."""
    argv = shlex.split(cmd)
    if argv[0] == "ray":
        argv = argv[argv.index("--") + 1:]
    if argv[0] == "torchrun":
        argv = ["python", *argv[argv.index("-m"):]]
    return argv


def test_the_readme_has_the_commands_this_test_reads():
    cmds = readme_commands()
    assert any(c.startswith("lorabench train") and "--workers 2 deepspeed.config=" in c for c in cmds)
    assert any(c.startswith("lorabench generate") for c in cmds) and any(c.startswith("torchrun") for c in cmds)


@pytest.mark.parametrize("cmd", readme_commands())
def test_every_readme_command_parses_and_its_config_validates(cmd):
    from cluster.cli import build_parser, eval_parser, parse_command
    from eval.config import load_eval_config
    from training.config import load_config

    train_cfg, eval_cfg = str(CONFIGS / "train/wan2.1-t2v-1.3b-lora.yaml"), str(CONFIGS / "eval/wan2.1-t2v-1.3b.yaml")
    if cmd.startswith("lorabench "):
        argv = _placeholders(shlex.split(cmd)[1:], train_cfg)
        if argv[0] == "eval":
            args = eval_parser().parse_intermixed_args(argv[1:])
            if args.config and args.config != "metrics":
                load_eval_config(REPO / args.config, args.overrides)
            return
        if argv[0] == "leaderboard":
            from eval.leaderboard.cli import _parser
            _parser().parse_args(argv[1:])
            return
        if argv[0] == "bench":
            from eval.leaderboard.config import load_bench_config
            rest = [a for a in argv[2:] if "=" in a]
            load_bench_config(REPO / argv[1], rest)
            return
        parse_command(argv)  # exits (SystemExit) on anything argparse refuses
        if argv[0] == "train" and "--help-config" not in argv:
            ns, extra = build_parser().parse_known_args(argv)
            load_config(REPO / ns.config, [*ns.overrides, *extra])
        return
    argv = _python_module_argv(cmd)
    module = argv[2]
    assert module in {"cluster.train", "cluster.eval", "training"}, cmd
    config = eval_cfg if module == "cluster.eval" else train_cfg
    argv = _placeholders(argv[3:], config)
    if module == "cluster.eval":
        load_eval_config(argv[0], argv[1:])
    else:
        load_config(argv[0], argv[1:] + (["parallel.backend=ray"] if module == "cluster.train" else []))


def _sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder laid out as the README assumes (configs/, tiny-models/wan, data/video), made by
    the commands the tiny config's header gives, run in-process by ``lorabench``'s own main."""
    from cluster.cli import main
    (tmp_path / "configs").symlink_to(CONFIGS)
    header = (CONFIGS / "train/tiny-wan.yaml").read_text()
    setup = [line.lstrip("# ").strip() for line in header.splitlines() if line.lstrip("# ").startswith("lorabench make-")]
    assert len(setup) == 2, header[:400]  # make-tiny and make-data, as the config header says
    monkeypatch.chdir(tmp_path)
    for cmd in setup:
        assert main(shlex.split(cmd)[1:]) == 0, cmd
    return tmp_path


def test_readme_train_example_runs_as_written(tmp_path, monkeypatch, capsys):
    from cluster.cli import main
    cmd = next(c for c in readme_commands() if c.startswith("lorabench train configs/train/tiny-wan.yaml optim"))
    cwd = _sandbox(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(shlex.split(cmd)[1:]) == 0
    assert "steps:            20" in capsys.readouterr().out
    assert (cwd / "runs/tiny-wan/checkpoints/step-0000020/manifest.json").is_file()


# The README's `--workers 2 deepspeed.config=...` example is parsed and validated above; a
# 2-worker Ray + DeepSpeed run and its console through Ray's relay (no library notices, progress
# as plain lines, the summary) are checked on the SLURM job's log (tests/cluster/test_slurm.py)
# and by the Ray tests (tests/cluster/test_ray_train.py), so it is not run a third time here.