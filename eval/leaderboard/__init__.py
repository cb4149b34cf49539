"""Benchmark runs over time: the bench config (config.py), one run's record and provenance
(record.py), the run store (store.py, SQLite or any SQLAlchemy URL), regressions against a
baseline window (regress.py), recording and rendering after a run (publish.py), the static HTML
leaderboard (render.py and its page in site/) and ``lorabench leaderboard`` (cli.py)."""
