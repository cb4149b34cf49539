"""``lorabench leaderboard add | list | show | export | render``: the run store from the shell.

Every command takes ``--store`` (a SQLite file or a SQLAlchemy URL; default: $LORABENCH_STORE).
``add`` records a finished training run and its eval that were not run through ``lorabench
bench`` (it is judged against the bench's earlier runs like a nightly one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from training.config import ConfigError

from ..metrics.paired import delta_text
from .store import Store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lorabench leaderboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.add_argument("--store", default=os.environ.get("LORABENCH_STORE"),
                       help="SQLite file or SQLAlchemy URL (default: $LORABENCH_STORE)")
        return c

    a = cmd("add", "record a finished training run and its eval folder")
    a.add_argument("--bench", required=True, help="the series it belongs to (baselines, history)")
    a.add_argument("--train", required=True, type=Path, help="the training run folder (has config.yaml, result.json)")
    a.add_argument("--eval", required=True, type=Path, help="the eval folder (has results.json)")
    a.add_argument("--run-id", help="default: <bench>-<time of the eval>")
    a.add_argument("--page", type=Path, help="render the leaderboard here afterwards")
    lst = cmd("list", "runs, newest first")
    lst.add_argument("--bench")
    lst.add_argument("--limit", type=int, default=20)
    s = cmd("show", "one run: provenance, metrics with intervals, paired deltas, alerts")
    s.add_argument("run_id")
    s.add_argument("--json", action="store_true", help="the whole record as JSON")
    e = cmd("export", "every run as CSV (one row per run, variant and metric) or JSON")
    e.add_argument("--format", choices=("csv", "json"), default="csv")
    e.add_argument("--bench")
    e.add_argument("--out", type=Path, help="file to write (default: stdout)")
    r = cmd("render", "the static HTML leaderboard of every run")
    r.add_argument("--out", type=Path, required=True, help="folder (opens from disk: OUT/index.html)")
    return p


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4g}"


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if not args.store:
        raise ConfigError("no store: pass --store FILE_OR_URL or set LORABENCH_STORE "
                          "(a bench config's `store:` is where `lorabench bench` wrote it)")
    with Store(args.store) as store:
        return {"add": _add, "list": _list, "show": _show, "export": _export, "render": _render}[args.cmd](store, args)


def _add(store: Store, args: argparse.Namespace) -> int:
    from training.config import load_config

    from .publish import publish
    from .regress import RegressionSettings
    results = args.eval / "results.json"
    config = args.train / "config.yaml"
    for f, what in ((results, "an eval folder (lorabench eval)"), (config, "a training run folder"),
                    (args.train / "result.json", "a finished training run folder")):
        if not f.is_file():
            raise ConfigError(f"{f} does not exist: --{'eval' if f == results else 'train'} must be {what}")
    body = json.loads(results.read_text())
    cfg = load_config(config)
    run_id = args.run_id or f"{args.bench}-{body['created'].replace(':', '').replace('-', '')[:15]}"
    pub = publish(store, run_id=run_id, bench=args.bench, bench_config={"added": True}, started=body["created"],
                  train_cfg=cfg, train_dir=args.train, eval_body=body, eval_dir=args.eval,
                  world_size=cfg.parallel.num_workers if cfg.parallel.backend == "ray" else 1,
                  regression=RegressionSettings(), page=args.page)
    print(f"{'already recorded' if pub.already else 'recorded'}: {run_id} (status {pub.record.status})")
    for a in pub.alerts:
        print(f"  REGRESSION {a['key']}: {a['message']}")
    if pub.page:
        print(f"leaderboard: {pub.page}")
    return 3 if pub.alerts else 0


def _list(store: Store, args: argparse.Namespace) -> int:
    ids = store.run_ids(args.bench, limit=args.limit)
    if not ids:
        print(f"no runs in {store.url}" + (f" for bench {args.bench}" if args.bench else ""))
        return 0
    print(f"{'run':32} {'bench':12} {'started':26} {'status':10} {'git':9} {'samples/s':>9}  final LoRA vs base")
    for rid in ids:
        r = store.get_run(rid)
        final = next((v for v in reversed(r.variants) if v["name"] != "base"), None)
        deltas = ", ".join(f"{k} {d['value']:+.3g}{'' if d.get('significant') in (True, None) else ' n.s.'}"
                           for k, d in sorted((final or {}).get("delta_vs_base", {}).items()) if d["value"] is not None)
        sha = (r.provenance.get("git", {}).get("sha") or "-")[:8]
        print(f"{r.id:32} {r.bench:12} {r.started:26} {r.status:10} {sha:9} {_fmt(r.perf.get('samples_per_s')):>9}  "
              f"{deltas or '-'}")
    return 0


def _show(store: Store, args: argparse.Namespace) -> int:
    r = store.get_run(args.run_id)
    if args.json:
        print(json.dumps(r.to_dict(), indent=1, sort_keys=True))
        return 0
    p = r.provenance
    git = p.get("git", {})
    print(f"run {r.id} (bench {r.bench}): {r.status}, {r.started} -> {r.finished}")
    print(f"  git {git.get('sha')}{' (dirty)' if git.get('dirty') else ''}; config {r.config_hash[:16]}; "
          f"dataset {str(p.get('dataset_hash'))[:16]}; seeds {p.get('seeds')}")
    print(f"  model {p.get('model', {}).get('path')}: " + ", ".join(
        f"{k} {v[:12]}" for k, v in p.get("model", {}).get("sha256", {}).items()))
    perf = r.perf
    print(f"  training: {_fmt(perf.get('samples_per_s'))} samples/s, {_fmt(perf.get('step_seconds'))} s/step, "
          f"peak memory per rank {perf.get('peak_memory_bytes')}, MFU {_fmt(perf.get('mfu'))} ({perf.get('mfu_note')})")
    for v in r.variants:
        print(f"  {v['name']} (step {v['step']}):")
        for k, m in sorted(v["metrics"].items()):
            ci = m.get("ci95")
            line = f"    {k:22} {_fmt(m['value'])}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
            d = v["delta_vs_base"].get(k)
            if d and d["value"] is not None:
                line += f"   vs base {delta_text(d, 4)}"
            print(line)
    for a in r.alerts:
        print(f"  REGRESSION {a['key']}: {a['message']}")
    return 0


def _export(store: Store, args: argparse.Namespace) -> int:
    text = store.export_csv(args.bench) if args.format == "csv" else store.export_json(args.bench)
    if args.out:
        from training.fsio import atomic_write_text
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _render(store: Store, args: argparse.Namespace) -> int:
    from .publish import render_store
    print(f"leaderboard: {render_store(store, args.out)}")
    return 0
