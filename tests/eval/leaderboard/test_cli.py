"""`lorabench leaderboard list | show | export | render` on a real SQLite store."""

from __future__ import annotations

import json

import pytest

from cluster.cli import main
from eval.leaderboard.store import Store
from training.config import ConfigError

from .test_store import make_run


@pytest.fixture
def store_path(tmp_path):
    db = tmp_path / "lb.db"
    with Store(db) as store:
        store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00"))
        worse = make_run("n-2", "2026-12-02T00:00:00+00:00", fvd=130.0)
        worse.status = "regressed"
        worse.alerts = [{"key": "run.step-2000@1/fvd", "value": 129.0, "baseline": 99.0, "threshold": 0.05,
                         "message": "fvd of run.step-2000@1: 129 vs baseline 99"}]
        store.add_run(worse)
    return db


def test_list_shows_runs_newest_first_with_deltas(store_path, capsys):
    assert main(["leaderboard", "list", "--store", str(store_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "bench", "started", "status"]
    assert lines[1].startswith("n-2") and "regressed" in lines[1] and lines[2].startswith("n-1")
    assert "fvd -5" in lines[1]          # the final checkpoint's paired delta vs base (significant)


def test_show_prints_provenance_metrics_deltas_and_alerts(store_path, capsys):
    assert main(["leaderboard", "show", "n-1", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "run n-1 (bench nightly): ok" in out and "git " + "a" * 40 in out
    assert "clip_score             30 [29, 31]   vs base +1 [-0.5, +2.5] n.s." in out
    assert main(["leaderboard", "show", "n-2", "--store", str(store_path)]) == 0
    assert "REGRESSION run.step-2000@1/fvd: fvd of run.step-2000@1: 129 vs baseline 99" in capsys.readouterr().out
    assert main(["leaderboard", "show", "n-1", "--json", "--store", str(store_path)]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "n-1"


def test_export_json_to_stdout_and_render(store_path, tmp_path, capsys):
    assert main(["leaderboard", "export", "--format", "json", "--store", str(store_path)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["n-2", "n-1"]
    assert main(["leaderboard", "render", "--out", str(tmp_path / "site"), "--store", str(store_path)]) == 0
    assert (tmp_path / "site/index.html").is_file() and "n-2" in (tmp_path / "site/data.js").read_text()


def test_no_store_and_unknown_run_are_one_line_errors(store_path, monkeypatch):
    from eval.leaderboard.cli import main as lb_main
    from eval.leaderboard.store import StoreError
    monkeypatch.delenv("LORABENCH_STORE", raising=False)
    with pytest.raises(ConfigError, match="--store FILE_OR_URL or set LORABENCH_STORE"):
        lb_main(["list"])
    monkeypatch.setenv("LORABENCH_STORE", f"sqlite:///{store_path}")     # a URL works as well as a path
    with pytest.raises(StoreError, match="no run 'n-9'.*leaderboard list"):
        lb_main(["show", "n-9"])
    assert lb_main(["list", "--bench", "nightly"]) == 0


def test_add_names_the_missing_file_and_what_the_folder_must_be(store_path, tmp_path):
    from eval.leaderboard.cli import main as lb_main
    (tmp_path / "train").mkdir()
    (tmp_path / "eval").mkdir()
    args = ["add", "--bench", "b", "--train", str(tmp_path / "train"), "--eval", str(tmp_path / "eval"),
            "--store", str(store_path)]
    with pytest.raises(ConfigError, match=r"eval/results.json does not exist: --eval must be an eval folder"):
        lb_main(args)
    (tmp_path / "eval/results.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"train/config.yaml does not exist: --train must be a training run folder"):
        lb_main(args)
