"""The tiny nightly bench end to end: real Ray (train and eval), real SQLite, the real page.

One bench run is killed (SIGKILL of the driver and its embedded Ray) once training has
finished; the same command, sent with a real `ray job submit` to a Ray head, continues that run
(no retraining), evaluates it, records it, finds it worse than an earlier run of the bench and
fails with alerts.json (exit code 3: ``test_regression_exit_code``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.cli import main as cli_main
from eval.leaderboard.store import Store
from training.fsio import read_jsonl
from training.layout import RunLayout

from tests.conftest import ray_head
from tests.eval.leaderboard.test_store import make_run

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[2]


def _bench_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "cluster.bench", str(REPO / "configs/bench/tiny.yaml"), f"out_dir={out}",
            f"store={out / 'lb.db'}", f"leaderboard={out / 'page'}"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _state(out: Path) -> dict:
    found = [json.loads(p.read_text()) for p in out.glob("tiny-*/bench.json")]
    return found[0] if found else {}


def test_tiny_bench_survives_a_crash_records_the_run_and_flags_a_regression(tmp_path):
    out = tmp_path / "bench"
    with Store(out / "lb.db") as store:   # an earlier night of this bench that was much better
        store.add_run(make_run("tiny-20261101-000000", "2026-11-01T00:00:00+00:00", bench="tiny", fvd=0.0,
                               fvd_ci=(0.0, 0.0), sps=1e6))

    # 1. The driver dies (SIGKILL, with its embedded Ray) right after training.
    proc = subprocess.Popen(_bench_cmd(out), cwd=tmp_path, env=_env(), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while _state(out).get("stage") != "trained" and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    state = _state(out)
    os.killpg(proc.pid, signal.SIGKILL)
    first_log = proc.communicate()[0]
    assert state.get("stage") == "trained", first_log[-3000:]
    subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True, timeout=60)
    run_id = state["id"]
    layout = RunLayout(out / run_id / "train" / "tiny")
    assert [s for s, _ in layout.complete_checkpoints()] == [4, 8]
    with Store(out / "lb.db") as store:
        assert store.run_ids() == ["tiny-20261101-000000"]       # nothing of the killed run

    # 2. The same command, now submitted with `ray job submit` to a Ray head (as on a cluster),
    #    continues that run: no retraining, eval on the head's actors, record, regression.
    with ray_head() as submit:
        job = submit(["-m", "cluster.bench", *_bench_cmd(out)[3:]], timeout=600)
    log = job.stdout + job.stderr
    assert job.returncode != 0 and "REGRESSION" in log, log[-4000:]   # the job fails: exit code 3
    assert f"Ray cluster {submit.address}" in log                     # it joined the head it was sent to
    assert f"continuing unfinished run {run_id} (stage: trained)" in log
    assert "training finished earlier (8 steps" in log
    steps = [r["step"] for r in read_jsonl(layout.metrics).records]
    assert steps == list(range(1, 9))                             # each step trained once
    assert _state(out) == {"id": run_id, "bench": "tiny", "started": state["started"], "stage": "recorded"}

    with Store(out / "lb.db") as store:
        assert store.run_ids("tiny") == [run_id, "tiny-20261101-000000"]
        run = store.get_run(run_id)
    assert run.status == "regressed"
    names = [v["name"] for v in run.variants]
    assert names == ["base", "tiny.step-0000004@1", "tiny.step-0000008@1"]
    final = run.variants[-1]
    for k in ("clip_score", "fvd", "fid", "kid"):
        assert final["metrics"][k]["value"] is not None, k
        assert final["delta_vs_base"][k]["value"] == pytest.approx(
            final["metrics"][k]["value"] - run.variants[0]["metrics"][k]["value"], abs=1e-9), k
    assert final["delta_vs_base"]["fvd"]["ci95"] is not None           # paired interval over 4 prompts
    assert final["delta_vs_previous"]["against"] == "tiny.step-0000004@1"
    assert [s for s, _ in run.losses] == list(range(1, 9))
    p = run.provenance
    assert set(p["model"]["sha256"]) == {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert len(p["dataset_hash"]) == 64 and p["adapters"][final["name"]] == final["sha256"]
    assert p["seeds"] == {"train": 0, "eval": 0} and p["libraries"]["torch"].startswith("2.13")
    assert run.perf["samples_per_s"] > 0 and run.perf["flops_per_sample"] > 0 and run.perf["mfu"] is None
    assert run.perf["device"] == "cpu" and "unknown peak (cpu)" in run.perf["mfu_note"]   # the ranks' device
    assert run.perf["peak_memory_bytes"]["0"] > 0
    assert len(run.samples) == 12 and all(Path(s["media"]).is_file() for s in run.samples)

    alerts = json.loads((out / run_id / "alerts.json").read_text())
    keys = {a["key"] for a in alerts["alerts"]}
    assert alerts["status"] == "regressed" and {"base/fvd", "perf/samples_per_s"} <= keys
    assert keys == {a["key"] for a in run.alerts}
    assert "REGRESSION perf/samples_per_s" in log

    # 3. The page holds the run and a copy of every sample.
    data = (out / "page" / "data.js").read_text()
    assert data.startswith("window.LEADERBOARD = ") and run_id in data
    assert len(list((out / "page" / "media").rglob("*.mp4"))) == 12

    # 4. The leaderboard commands read the same store.
    store_arg = ["--store", str(out / "lb.db")]
    assert cli_main(["leaderboard", "export", "--format", "csv", "--out", str(tmp_path / "x.csv"), *store_arg]) == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x.csv").read_text())))
    assert {r["run_id"] for r in rows} == {run_id, "tiny-20261101-000000"}
    # `add` records a run made outside `bench` (judged against its own bench: none earlier -> exit 0)
    assert cli_main(["leaderboard", "add", "--bench", "manual", "--train", str(layout.root),
                     "--eval", str(out / run_id / "eval" / "tiny"), "--run-id", "manual-1", *store_arg]) == 0
    with Store(out / "lb.db") as store:
        added = store.get_run("manual-1")
    assert added.status == "ok" and [v["name"] for v in added.variants] == names


def test_regression_exit_code(monkeypatch, tmp_path):
    """`lorabench bench` exits 3 when the recorded run has alerts, 0 otherwise."""
    import cluster.bench as bench
    from eval.leaderboard.publish import Published
    calls = []

    def fake_run(cfg, run_id=None, new=False):
        calls.append((cfg.name, run_id, new))
        return Published(make_run("tiny-1", "2026-12-01T00:00:00+00:00", bench="tiny"), alerts=alerts)

    monkeypatch.setattr(bench, "run_bench", fake_run)
    cfg = str(REPO / "configs/bench/tiny.yaml")
    alerts = [{"key": "base/fvd", "message": "fvd worse"}]
    assert bench.main([cfg, "--run-id", "tiny-1", f"out_dir={tmp_path}"]) == bench.EXIT_REGRESSION == 3
    alerts = []
    assert bench.main([cfg, "--new", f"out_dir={tmp_path}"]) == 0
    assert calls == [("tiny", "tiny-1", False), ("tiny", None, True)]
