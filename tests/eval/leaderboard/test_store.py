"""The run store (real SQLite files): schema version and migrations, one transaction per run,
runs read back as written, two runs compared, a regression flagged, CSV/JSON export."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest
import sqlalchemy as sa

from eval.leaderboard.regress import RegressionSettings, find_regressions, metric_directions
from eval.leaderboard.store import MIGRATIONS, RunRecord, Store, StoreError, schema_version


def make_run(run_id: str, started: str, *, fvd: float = 100.0, fvd_ci=(90.0, 110.0), clip: float = 30.0,
             sps: float = 10.0, bench: str = "nightly") -> RunRecord:
    def metric(v, ci, n=8):
        return {"value": v, "ci95": list(ci) if ci else None, "n": n, "n_ref": 16}

    delta = {"value": -5.0, "ci95": [-9.0, -1.0], "significant": True, "n": 8, "n_prompts": 4}
    return RunRecord(
        id=run_id, bench=bench, started=started, finished=started.replace("T00", "T01"), config_hash="c" * 64,
        config={"train": {"lr": 1e-4}}, provenance={"git": {"sha": "a" * 40, "dirty": False}, "dataset_hash": "d" * 64,
                                                    "seeds": {"train": 0, "eval": 0}},
        perf={"samples_per_s": sps, "step_seconds": 0.5, "mfu": 0.31, "peak_memory_bytes": {"0": 10, "1": 12}},
        paths={"train": "/runs/t", "eval": "/runs/e"},
        variants=[
            {"name": "base", "step": None, "scale": None, "group": None, "sha256": None,
             "metrics": {"fvd": metric(fvd + 5, fvd_ci), "clip_score": metric(clip - 1, (clip - 2, clip))},
             "delta_vs_base": {}, "delta_vs_previous": None},
            {"name": "run.step-1000@1", "step": 1000, "scale": 1.0, "group": "run", "sha256": "e" * 64,
             "metrics": {"fvd": metric(fvd, fvd_ci), "clip_score": metric(clip, (clip - 1, clip + 1)),
                         "sharpness": metric(50.0, None)},
             "delta_vs_base": {"fvd": delta, "clip_score": {**delta, "value": 1.0, "ci95": [-0.5, 2.5],
                                                             "significant": False}},
             "delta_vs_previous": None},
            {"name": "run.step-2000@1", "step": 2000, "scale": 1.0, "group": "run", "sha256": "f" * 64,
             "metrics": {"fvd": metric(fvd - 1, fvd_ci)}, "delta_vs_base": {"fvd": delta},
             "delta_vs_previous": {"against": "run.step-1000@1", "metrics": {"fvd": {**delta, "value": -1.0}}}}],
        losses=[(1, 0.5), (2, 0.25)],
        samples=[{"variant": "base", "sample_id": "p000-s0", "prompt_id": "p000", "prompt": "a cat", "seed": 7,
                  "media": "/e/base/p000-s0.mp4", "kind": "video"}])


def test_a_run_reads_back_as_written(tmp_path):
    run = make_run("n-1", "2026-12-01T00:00:00+00:00")
    with Store(tmp_path / "lb.db") as store:
        store.add_run(run)
        assert store.get_run("n-1") == run
        assert store.has_run("n-1") and not store.has_run("n-2")


def test_new_store_has_the_schema_version_and_reopening_keeps_it(tmp_path):
    db = tmp_path / "sub" / "lb.db"        # the folder is created
    with Store(db) as store:
        assert store.version == schema_version() == MIGRATIONS[-1][0]
        store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00"))
    with Store(str(db)) as again:          # reopening migrates nothing and keeps the runs
        assert again.run_ids() == ["n-1"]
    rows = sqlite3.connect(db).execute("select version from lorabench_schema").fetchall()
    assert rows == [(schema_version(),)]


def test_an_older_store_is_migrated_in_place_and_keeps_its_runs(tmp_path):
    db = tmp_path / "lb.db"
    with Store(db) as store:
        store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00"))

    def add_note(conn):   # what a next release's step looks like: a new column, filled for old rows
        conn.execute(sa.text("ALTER TABLE runs ADD COLUMN note TEXT"))
        conn.execute(sa.text("UPDATE runs SET note = 'migrated'"))

    v2 = MIGRATIONS + [(2, "runs.note", add_note)]
    with Store(db, migrations=v2) as store:
        assert store.version == 2 and store.run_ids() == ["n-1"]
    con = sqlite3.connect(db)
    assert con.execute("select version from lorabench_schema").fetchall() == [(2,)]
    assert con.execute("select note from runs").fetchall() == [("migrated",)]


def test_a_failing_migration_leaves_the_store_as_it_was(tmp_path):
    db = tmp_path / "lb.db"
    with Store(db) as store:
        store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00"))

    def broken(conn):
        conn.execute(sa.text("ALTER TABLE runs ADD COLUMN note TEXT"))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        Store(db, migrations=MIGRATIONS + [(2, "broken", broken)])
    con = sqlite3.connect(db)
    assert con.execute("select version from lorabench_schema").fetchall() == [(1,)]
    assert "note" not in [r[1] for r in con.execute("pragma table_info(runs)")]


def test_a_store_from_a_newer_lorabench_or_another_program_is_refused(tmp_path):
    db = tmp_path / "lb.db"
    Store(db).close()
    con = sqlite3.connect(db)
    con.execute("update lorabench_schema set version = 99")
    con.commit()
    with pytest.raises(StoreError, match="schema version 99, newer than this lorabench's 1: upgrade"):
        Store(db)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("create table t (x)")
    con.commit()
    with pytest.raises(StoreError, match="not a lorabench store"):
        Store(other)


def test_a_run_that_fails_mid_record_leaves_nothing(tmp_path):
    run = make_run("n-1", "2026-12-01T00:00:00+00:00")
    run.samples.append(dict(run.samples[0]))        # same primary key: the insert of samples fails
    with Store(tmp_path / "lb.db") as store:
        with pytest.raises(sa.exc.IntegrityError):
            store.add_run(run)
        assert store.run_ids() == []
    con = sqlite3.connect(tmp_path / "lb.db")
    for table in ("runs", "variants", "metrics", "deltas", "losses", "samples", "alerts"):
        assert con.execute(f"select count(*) from {table}").fetchone() == (0,), table


def test_non_finite_provenance_is_refused_before_anything_is_written(tmp_path):
    run = make_run("n-1", "2026-12-01T00:00:00+00:00")
    run.perf["mfu"] = float("nan")
    with Store(tmp_path / "lb.db") as store:
        with pytest.raises(ValueError):
            store.add_run(run)
        assert store.run_ids() == []


def test_a_recorded_run_is_not_overwritten(tmp_path):
    with Store(tmp_path / "lb.db") as store:
        store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00"))
        with pytest.raises(StoreError, match="already in"):
            store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00", fvd=1.0))
        assert store.get_run("n-1").variants[1]["metrics"]["fvd"]["value"] == 100.0


def test_two_runs_compared_and_a_regression_flagged(tmp_path):
    with Store(tmp_path / "lb.db") as store:
        for i, fvd in enumerate((100.0, 102.0, 98.0)):
            store.add_run(make_run(f"n-{i}", f"2026-11-2{i}T00:00:00+00:00", fvd=fvd))
        store.add_run(make_run("other-0", "2026-11-21T00:00:00+00:00", fvd=10.0, bench="other"))
        window = [store.get_run(i) for i in store.run_ids("nightly", before="2026-12-01", limit=7)]
    assert [r.id for r in window] == ["n-2", "n-1", "n-0"]          # same bench only, newest first
    directions = metric_directions()
    assert directions["fvd"] == -1 and directions["clip_score"] == 1 and "sharpness" not in directions
    settings = RegressionSettings(metric_threshold=0.05, throughput_threshold=0.2)

    same = make_run("n-3", "2026-12-01T00:00:00+00:00", fvd=101.0)
    assert find_regressions(same, window, directions, settings) == []
    # FVD up 20% and outside this run's interval; CLIP down; throughput halved.
    worse = make_run("n-4", "2026-12-01T00:00:00+00:00", fvd=120.0, fvd_ci=(115.0, 125.0), clip=25.0, sps=5.0)
    alerts = {a["key"]: a for a in find_regressions(worse, window, directions, settings)}
    assert set(alerts) == {"base/fvd", "run.step-1000@1/fvd", "run.step-2000@1/fvd", "base/clip_score",
                           "run.step-1000@1/clip_score", "perf/samples_per_s"}
    a = alerts["run.step-1000@1/fvd"]
    assert (a["value"], a["baseline"], a["threshold"]) == (120.0, 100.0, 0.05)
    assert "20.0% worse" in a["message"] and "lower is better" in a["message"]
    assert alerts["perf/samples_per_s"]["baseline"] == 10.0
    # A worse value whose own interval still holds the baseline is noise, not a regression.
    noisy = make_run("n-5", "2026-12-01T00:00:00+00:00", fvd=120.0, fvd_ci=(60.0, 180.0))
    assert [a["key"] for a in find_regressions(noisy, window, directions, settings)] == []
    # Better is never flagged, and nothing is judged before min_runs earlier runs exist.
    better = make_run("n-6", "2026-12-01T00:00:00+00:00", fvd=50.0, fvd_ci=(45.0, 55.0), clip=40.0, sps=20.0)
    assert find_regressions(better, window, directions, settings) == []
    assert find_regressions(worse, window[:2], directions, RegressionSettings(min_runs=3)) == []
    # Per-metric thresholds override the default.
    loose = RegressionSettings(metric_thresholds={"fvd": 0.5, "clip_score": 0.5}, throughput_threshold=0.9)
    assert find_regressions(worse, window, directions, loose) == []


def test_export_csv_and_json(tmp_path):
    with Store(tmp_path / "lb.db") as store:
        store.add_run(make_run("n-1", "2026-12-01T00:00:00+00:00"))
        store.add_run(make_run("n-2", "2026-12-02T00:00:00+00:00", fvd=90.0))
        rows = list(csv.DictReader(io.StringIO(store.export_csv())))
        body = json.loads(store.export_json())
    assert len(rows) == 2 * (2 + 3 + 1)          # runs x (base 2 + step-1000 3 + step-2000 1 metrics)
    r = next(r for r in rows if r["run_id"] == "n-2" and r["variant"] == "run.step-1000@1" and r["metric"] == "fvd")
    assert (float(r["value"]), float(r["ci95_lo"]), float(r["ci95_hi"]), r["n"]) == (90.0, 90.0, 110.0, "8")
    assert (float(r["delta_vs_base"]), float(r["delta_lo"]), r["delta_significant"]) == (-5.0, -9.0, "True")
    s = next(r for r in rows if r["run_id"] == "n-1" and r["metric"] == "sharpness")
    assert s["ci95_lo"] == "" and s["delta_vs_base"] == ""
    assert body["schema_version"] == 1 and [r["id"] for r in body["runs"]] == ["n-2", "n-1"]
    assert body["runs"][1]["variants"][2]["delta_vs_previous"]["against"] == "run.step-1000@1"


def test_a_process_killed_mid_record_leaves_no_half_run(tmp_path):
    """SIGKILL after the run's row, variants and metrics are written, before its samples: the
    database (journal rolled back on the next open) holds no trace of the run."""
    import subprocess
    import sys
    import textwrap
    db = tmp_path / "lb.db"
    script = textwrap.dedent(f"""
        import os, signal, sqlalchemy as sa
        from tests.eval.leaderboard.test_store import make_run
        from eval.leaderboard import store as st
        real = sa.engine.Connection.execute
        def execute(self, stmt, *a, **k):
            if getattr(stmt, "table", None) is st.samples:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, stmt, *a, **k)
        sa.engine.Connection.execute = execute
        s = st.Store({str(db)!r})
        s.add_run(make_run("n-0", "2026-11-30T00:00:00+00:00"))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with Store(db) as store:
        assert store.run_ids() == []
    con = sqlite3.connect(db)
    for table in ("runs", "variants", "metrics", "deltas", "losses"):
        assert con.execute(f"select count(*) from {table}").fetchone() == (0,), table
