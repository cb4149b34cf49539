"""The run store: every benchmark run with its provenance, numbers and curves, in one database.

SQLite (one file) by default, any SQLAlchemy URL optionally (``postgresql://...``): the schema
uses portable column types only. The schema carries a version; :data:`MIGRATIONS` upgrades an
older store in one transaction when it is opened, and a store written by a newer lorabench is
refused rather than misread. A run is written in one transaction (:meth:`Store.add_run`): a
crash or an error mid-record leaves no half run behind.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


class StoreError(RuntimeError):
    """A store that cannot be used as it is (newer schema, missing run): the message says what to do."""


# ----------------------------------------------------------------------------- schema

meta = sa.MetaData()
schema_table = sa.Table("lorabench_schema", meta, sa.Column("version", sa.Integer, nullable=False))
runs = sa.Table(
    "runs", meta,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("bench", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),          # ok | regressed
    sa.Column("started", sa.String(40), nullable=False),         # ISO 8601 UTC: sorts as text
    sa.Column("finished", sa.String(40)),
    sa.Column("git_sha", sa.String(64)), sa.Column("git_dirty", sa.Boolean),
    sa.Column("config_hash", sa.String(64), nullable=False),
    sa.Column("dataset_hash", sa.String(64)),
    sa.Column("samples_per_s", sa.Float), sa.Column("step_seconds", sa.Float), sa.Column("mfu", sa.Float),
    sa.Column("config", sa.Text, nullable=False),                # the resolved configs, JSON
    sa.Column("provenance", sa.Text, nullable=False),            # model/adapter hashes, seeds, versions, hardware
    sa.Column("perf", sa.Text, nullable=False),                  # training performance, JSON
    sa.Column("paths", sa.Text, nullable=False),                 # where its train/eval folders are
)
variants = sa.Table(
    "variants", meta,
    sa.Column("run_id", sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("variant", sa.String(300), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),           # eval order: base, then steps ascending
    sa.Column("step", sa.Integer), sa.Column("scale", sa.Float), sa.Column("grp", sa.String(300)),
    sa.Column("adapter_sha256", sa.String(64)),
)
metrics = sa.Table(
    "metrics", meta,
    sa.Column("run_id", sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("variant", sa.String(300), primary_key=True),
    sa.Column("metric", sa.String(100), primary_key=True),
    sa.Column("value", sa.Float), sa.Column("lo", sa.Float), sa.Column("hi", sa.Float),
    sa.Column("n", sa.Integer), sa.Column("n_ref", sa.Integer),
)
deltas = sa.Table(
    "deltas", meta,
    sa.Column("run_id", sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("variant", sa.String(300), primary_key=True),
    sa.Column("kind", sa.String(20), primary_key=True),          # vs_base | vs_previous
    sa.Column("metric", sa.String(100), primary_key=True),
    sa.Column("against", sa.String(300), nullable=False),
    sa.Column("value", sa.Float), sa.Column("lo", sa.Float), sa.Column("hi", sa.Float),
    sa.Column("significant", sa.Boolean), sa.Column("n", sa.Integer), sa.Column("n_prompts", sa.Integer),
)
losses = sa.Table(
    "losses", meta,
    sa.Column("run_id", sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True), sa.Column("loss", sa.Float, nullable=False),
)
samples = sa.Table(
    "samples", meta,
    sa.Column("run_id", sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("variant", sa.String(300), primary_key=True),
    sa.Column("sample_id", sa.String(200), primary_key=True),
    sa.Column("prompt_id", sa.String(200)), sa.Column("prompt", sa.Text), sa.Column("seed", sa.BigInteger),
    sa.Column("media", sa.Text), sa.Column("kind", sa.String(10)),
)
alerts = sa.Table(
    "alerts", meta,
    sa.Column("run_id", sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("key", sa.String(400), primary_key=True),          # "<variant>/<metric>" or "perf/<field>"
    sa.Column("value", sa.Float), sa.Column("baseline", sa.Float), sa.Column("threshold", sa.Float),
    sa.Column("message", sa.Text, nullable=False),
)
TABLES = (runs, variants, metrics, deltas, losses, samples, alerts)


def _v1(conn: Connection) -> None:
    meta.create_all(conn, tables=[schema_table, *TABLES])


#: (version, what it does, how): applied in order to bring an older store up to date, all in the
#: one transaction that opens it. Append a step (never edit a released one) when the schema changes.
Migration = tuple[int, str, Callable[[Connection], None]]
MIGRATIONS: list[Migration] = [(1, "runs, variants, metrics, deltas, losses, samples, alerts", _v1)]


def schema_version(migrations: Optional[list[Migration]] = None) -> int:
    return max(v for v, _, _ in (migrations or MIGRATIONS))


# ----------------------------------------------------------------------------- one run


@dataclass
class RunRecord:
    """Everything recorded for one benchmark run (built by :mod:`.record`)."""

    id: str
    bench: str
    started: str
    finished: Optional[str]
    config_hash: str
    config: dict[str, Any]
    provenance: dict[str, Any]                     # git, model, adapters, dataset, seeds, libraries, hardware
    perf: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    status: str = "ok"
    variants: list[dict[str, Any]] = field(default_factory=list)   # name, step, scale, group, sha256,
    #                                                                metrics{}, delta_vs_base{}, delta_vs_previous
    losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)     # key, value, baseline, threshold, message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_url(where: str | Path) -> str:
    """A file path becomes a SQLite URL; anything with ``://`` is taken as a SQLAlchemy URL."""
    text = str(where)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class Store:
    """Open (and if needed create or upgrade) the store at ``where`` (a file path or a URL)."""

    def __init__(self, where: str | Path, migrations: Optional[list[Migration]] = None) -> None:
        self.url = store_url(where)
        self.engine: Engine = sa.create_engine(self.url)
        if self.engine.dialect.name == "sqlite":
            _transactional_sqlite(self.engine)
        self.migrations = migrations or MIGRATIONS
        self.version = self._migrate()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self) -> int:
        target = schema_version(self.migrations)
        with self.engine.begin() as conn:
            have = 0
            if sa.inspect(conn).has_table(schema_table.name):
                have = conn.execute(sa.select(schema_table.c.version)).scalar() or 0
            elif sa.inspect(conn).get_table_names():
                raise StoreError(f"{self.url} holds tables but no lorabench schema version: not a lorabench "
                                 "store; give leaderboard.store a new file")
            if have > target:
                raise StoreError(f"{self.url} is at schema version {have}, newer than this lorabench's {target}: "
                                 "upgrade lorabench (pip install -U) to read it; it was left unchanged")
            for version, _what, step in self.migrations:
                if version > have:
                    step(conn)
            if have == 0:
                conn.execute(schema_table.insert().values(version=target))
            elif have < target:
                conn.execute(schema_table.update().values(version=target))
        return target

    # -- writing -----------------------------------------------------------------------------

    def add_run(self, run: RunRecord) -> None:
        """Write one run, all of it or nothing (one transaction). A run id already stored is refused."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(runs.c.id).where(runs.c.id == run.id)).first():
                raise StoreError(f"run {run.id!r} is already in {self.url}; a recorded run is not overwritten")
            git = run.provenance.get("git", {})
            conn.execute(runs.insert().values(
                id=run.id, bench=run.bench, status=run.status, started=run.started, finished=run.finished,
                git_sha=git.get("sha"), git_dirty=git.get("dirty"), config_hash=run.config_hash,
                dataset_hash=run.provenance.get("dataset_hash"), samples_per_s=run.perf.get("samples_per_s"),
                step_seconds=run.perf.get("step_seconds"), mfu=run.perf.get("mfu"),
                config=_dump(run.config), provenance=_dump(run.provenance), perf=_dump(run.perf),
                paths=_dump(run.paths)))
            for pos, v in enumerate(run.variants):
                conn.execute(variants.insert().values(run_id=run.id, variant=v["name"], position=pos, step=v.get("step"),
                                                      scale=v.get("scale"), grp=v.get("group"),
                                                      adapter_sha256=v.get("sha256")))
                rows = [{"run_id": run.id, "variant": v["name"], "metric": k, "value": m.get("value"),
                         "lo": (m.get("ci95") or [None, None])[0], "hi": (m.get("ci95") or [None, None])[1],
                         "n": m.get("n"), "n_ref": m.get("n_ref")} for k, m in v.get("metrics", {}).items()]
                if rows:
                    conn.execute(metrics.insert(), rows)
                compared = [("vs_base", "base", v.get("delta_vs_base") or {})]
                if v.get("delta_vs_previous"):
                    compared.append(("vs_previous", v["delta_vs_previous"]["against"],
                                     v["delta_vs_previous"]["metrics"]))
                rows = [{"run_id": run.id, "variant": v["name"], "kind": kind, "metric": k, "against": against,
                         "value": d.get("value"), "lo": (d.get("ci95") or [None, None])[0],
                         "hi": (d.get("ci95") or [None, None])[1], "significant": d.get("significant"),
                         "n": d.get("n"), "n_prompts": d.get("n_prompts")}
                        for kind, against, ds in compared for k, d in ds.items()]
                if rows:
                    conn.execute(deltas.insert(), rows)
            if run.losses:
                conn.execute(losses.insert(), [{"run_id": run.id, "step": s, "loss": x} for s, x in run.losses])
            if run.samples:
                conn.execute(samples.insert(), [{"run_id": run.id, **{k: s.get(k) for k in (
                    "variant", "sample_id", "prompt_id", "prompt", "seed", "media", "kind")}} for s in run.samples])
            if run.alerts:
                conn.execute(alerts.insert(), [{"run_id": run.id, **{k: a.get(k) for k in (
                    "key", "value", "baseline", "threshold", "message")}} for a in run.alerts])

    # -- reading -----------------------------------------------------------------------------

    def run_ids(self, bench: Optional[str] = None, before: Optional[str] = None,
                status: Optional[Iterable[str]] = None, limit: Optional[int] = None) -> list[str]:
        """Run ids, newest first (by start time), optionally of one bench and started before a time."""
        q = sa.select(runs.c.id).order_by(runs.c.started.desc(), runs.c.id.desc())
        if bench is not None:
            q = q.where(runs.c.bench == bench)
        if before is not None:
            q = q.where(runs.c.started < before)
        if status is not None:
            q = q.where(runs.c.status.in_(list(status)))
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def has_run(self, run_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first() is not None

    def get_run(self, run_id: str) -> RunRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.url}; `lorabench leaderboard list` shows the runs")

            def rows(table: sa.Table, *order: Any) -> list[Any]:
                return list(conn.execute(sa.select(table).where(table.c.run_id == run_id).order_by(*order))
                            .mappings())

            ms, ds = rows(metrics, metrics.c.metric), rows(deltas, deltas.c.metric)
            out_variants = []
            for v in rows(variants, variants.c.position):
                mine = [d for d in ds if d["variant"] == v["variant"]]
                prev = [d for d in mine if d["kind"] == "vs_previous"]
                out_variants.append({
                    "name": v["variant"], "step": v["step"], "scale": v["scale"], "group": v["grp"],
                    "sha256": v["adapter_sha256"],
                    "metrics": {m["metric"]: {"value": m["value"], "ci95": _ci(m), "n": m["n"], "n_ref": m["n_ref"]}
                                for m in ms if m["variant"] == v["variant"]},
                    "delta_vs_base": {d["metric"]: _delta(d) for d in mine if d["kind"] == "vs_base"},
                    "delta_vs_previous": {"against": prev[0]["against"], "metrics": {d["metric"]: _delta(d)
                                                                                    for d in prev}} if prev else None})
            return RunRecord(
                id=row["id"], bench=row["bench"], started=row["started"], finished=row["finished"],
                config_hash=row["config_hash"], config=json.loads(row["config"]),
                provenance=json.loads(row["provenance"]), perf=json.loads(row["perf"]), paths=json.loads(row["paths"]),
                status=row["status"], variants=out_variants,
                losses=[(r["step"], r["loss"]) for r in rows(losses, losses.c.step)],
                samples=[{k: r[k] for k in ("variant", "sample_id", "prompt_id", "prompt", "seed", "media", "kind")}
                         for r in rows(samples, samples.c.variant, samples.c.sample_id)],
                alerts=[{k: r[k] for k in ("key", "value", "baseline", "threshold", "message")}
                        for r in rows(alerts, alerts.c.key)])

    def runs(self, bench: Optional[str] = None, limit: Optional[int] = None) -> list[RunRecord]:
        return [self.get_run(i) for i in self.run_ids(bench, limit=limit)]

    # -- export ------------------------------------------------------------------------------

    def export_json(self, bench: Optional[str] = None) -> str:
        return json.dumps({"schema_version": self.version, "runs": [r.to_dict() for r in self.runs(bench)]},
                          indent=1, sort_keys=True)

    def export_csv(self, bench: Optional[str] = None) -> str:
        """One row per run, variant and metric: the metric with its interval, and its paired delta vs base."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["run_id", "bench", "started", "status", "git_sha", "git_dirty", "config_hash", "samples_per_s",
                    "mfu", "variant", "step", "scale", "metric", "value", "ci95_lo", "ci95_hi", "n",
                    "delta_vs_base", "delta_lo", "delta_hi", "delta_significant"])
        for r in self.runs(bench):
            git = r.provenance.get("git", {})
            for v in r.variants:
                for k, m in sorted(v["metrics"].items()):
                    d = v["delta_vs_base"].get(k, {})
                    lo, hi = m["ci95"] or (None, None)
                    dlo, dhi = d.get("ci95") or (None, None)
                    w.writerow([r.id, r.bench, r.started, r.status, git.get("sha"), git.get("dirty"), r.config_hash,
                                r.perf.get("samples_per_s"), r.perf.get("mfu"), v["name"], v["step"], v["scale"], k,
                                m["value"], lo, hi, m["n"], d.get("value"), dlo, dhi, d.get("significant")])
        return buf.getvalue()


def _transactional_sqlite(engine: Engine) -> None:
    """Make SQLite transactions real, DDL included.

    Python's sqlite3 driver opens a transaction only before INSERT/UPDATE/DELETE, so a schema
    change (a migration's ALTER TABLE) commits on its own and a failing migration would leave the
    store half-upgraded. Taking over BEGIN (SQLAlchemy's documented recipe for pysqlite) puts
    every statement of ``engine.begin()`` in one transaction. Concurrent writers (two benches on
    one file) wait up to 60 s for the lock instead of failing at once.
    """
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA busy_timeout = 60000")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, allow_nan=False)


def _ci(row: Any) -> Optional[list[float]]:
    return None if row["lo"] is None or row["hi"] is None else [row["lo"], row["hi"]]


def _delta(row: Any) -> dict[str, Any]:
    return {"value": row["value"], "ci95": _ci(row), "significant": row["significant"], "n": row["n"],
            "n_prompts": row["n_prompts"]}
