"""After a benchmark run: judge it against its baseline window, store it (one transaction) and
render the page. Shared by ``lorabench bench`` and the demo."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from training.config import RunConfig
from training.fsio import atomic_write_json

from .record import build_record, site_data
from .regress import RegressionSettings, find_regressions, metric_directions
from .store import RunRecord, Store


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Published:
    record: RunRecord
    alerts: list[dict[str, Any]] = field(default_factory=list)
    page: Optional[Path] = None
    already: bool = False            # the run was in the store before (a re-run after a crash)

    @property
    def regressed(self) -> bool:
        return bool(self.alerts)


def publish(store: Store, *, run_id: str, bench: str, bench_config: dict[str, Any], started: str,
            train_cfg: RunConfig, train_dir: Path, eval_body: dict[str, Any], eval_dir: Path, world_size: int,
            regression: RegressionSettings, alerts_file: Optional[Path] = None, page: Optional[Path] = None,
            peak_per_device: Optional[float] = None) -> Published:
    """Record the run (unless it already is: then its stored alerts stand) and render the page."""
    if store.has_run(run_id):
        record, already = store.get_run(run_id), True
    else:
        record = build_record(run_id=run_id, bench=bench, bench_config=bench_config, started=started,
                              finished=utc_now(), train_cfg=train_cfg, train_dir=train_dir, eval_body=eval_body,
                              eval_dir=eval_dir, world_size=world_size, peak_per_device=peak_per_device)
        window = [store.get_run(i) for i in store.run_ids(bench, before=started, limit=regression.window)]
        record.alerts = find_regressions(record, window, metric_directions(), regression)
        record.status = "regressed" if record.alerts else "ok"
        store.add_run(record)
        already = False
    if alerts_file is not None:
        atomic_write_json(alerts_file, {"run": record.id, "bench": record.bench, "status": record.status,
                                        "alerts": record.alerts})
    out = Published(record, list(record.alerts), already=already)
    if page is not None:
        out.page = render_store(store, page)
    return out


def render_store(store: Store, out: Path) -> Path:
    """The page for every run in the store."""
    from .render import render
    return render(site_data(store.runs(), metric_directions(), utc_now()), Path(out))
