"""``lorabench bench CONFIG`` / ``python -m cluster.bench CONFIG``: one nightly benchmark run.

Train a LoRA (Ray), evaluate base vs every checkpoint (Ray, same prompts and seeds), record the
run with its provenance in the store, judge it against the bench's baseline window, and render
the leaderboard. The exit code is 0, or 3 when a regression was flagged (alerts.json says which).

Resumable: the run's folder ``<out_dir>/<run id>/`` holds a ``bench.json`` state. A re-run after a
crash continues the newest unfinished run of the bench: training resumes from its last
checkpoint, the eval keeps every finished sample, and a run already in the store is not written
twice. ``--run-id ID`` continues (or starts) that run; ``--new`` starts a fresh one regardless.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from eval.leaderboard.config import BenchConfig, load_bench_config, stage_path
from eval.leaderboard.publish import Published, publish, utc_now
from eval.metrics.paired import delta_text
from training.config import ConfigError, RunConfig
from training.fsio import atomic_write_json
from cluster.entry import driver_main

EXIT_REGRESSION = 3
STATE = "bench.json"
#: stages of a run, in order; bench.json records the last one finished
STAGES = ("started", "trained", "evaluated", "recorded")


@dataclass
class BenchRun:
    id: str
    started: str
    stage: str
    root: Path
    bench: str = ""

    def save(self) -> None:
        atomic_write_json(self.root / STATE, {"id": self.id, "bench": self.bench, "started": self.started,
                                              "stage": self.stage})

    def advance(self, stage: str) -> None:
        self.stage = stage
        self.save()


def _read_state(folder: Path) -> Optional[BenchRun]:
    try:
        d = json.loads((folder / STATE).read_text())
        return BenchRun(d["id"], d["started"], d["stage"], folder, d.get("bench", ""))
    except (OSError, ValueError, KeyError):
        return None


def open_run(cfg: BenchConfig, run_id: Optional[str] = None, new: bool = False) -> BenchRun:
    """The run to work on: the one named, else the newest unfinished run of this bench, else a new one."""
    out = Path(cfg.out_dir).resolve()
    if run_id is not None:
        found = _read_state(out / run_id)
        if found:
            return found
    elif not new:
        # Another bench sharing out_dir ("tiny-extra" next to "tiny") matches the glob: bench.json says whose.
        unfinished = [r for r in (_read_state(d) for d in out.glob(f"{cfg.name}-*") if d.is_dir())
                      if r is not None and r.bench == cfg.name and r.stage != "recorded"]
        if unfinished:
            run = max(unfinished, key=lambda r: (r.started, r.id))
            print(f"==> continuing unfinished run {run.id} (stage: {run.stage}); --new starts a fresh one")
            return run
    now = _dt.datetime.now(_dt.timezone.utc)
    rid = run_id or f"{cfg.name}-{now:%Y%m%d-%H%M%S}"
    run = BenchRun(rid, now.isoformat(timespec="seconds"), "started", out / rid, cfg.name)
    run.root.mkdir(parents=True, exist_ok=True)
    run.save()
    return run


def stage_configs(cfg: BenchConfig, run: BenchRun) -> tuple[RunConfig, Any]:
    """Both stage configs, validated before anything heavy: the training run and its eval."""
    from eval.config import load_eval_config
    from training.config import load_config
    from training.layout import RunLayout

    train_extra: list[str] = []
    eval_extra: list[str] = []
    if cfg.assets == "tiny":
        from cluster.demo import prepare_tiny_assets
        assets = prepare_tiny_assets(Path(cfg.out_dir).resolve() / "assets")
        train_extra, eval_extra = assets.train_overrides(), assets.eval_overrides()
    # Every run of a bench trains under the bench's name, so its checkpoints' variant names
    # (the run folder's name + step) are the same from night to night and can be compared.
    tcfg = load_config(stage_path(cfg.train.config), [
        *train_extra, *cfg.train.overrides, f"output_dir={run.root / 'train'}", f"run_name={cfg.name}",
        "train.resume=auto"])
    run_dir = RunLayout.for_run(tcfg.output_dir, tcfg.run_name).root
    ecfg = load_eval_config(stage_path(cfg.eval.config), [
        *eval_extra, *cfg.eval.overrides, f"output_dir={run.root / 'eval'}", f"variants.adapters=[{run_dir}]",
        f"name={cfg.name}"])
    return tcfg, ecfg


def run_bench(cfg: BenchConfig, *, run_id: Optional[str] = None, new: bool = False,
              bench_config: Optional[dict[str, Any]] = None) -> Published:
    from eval.leaderboard.store import Store
    with Store(cfg.store) as store:   # opened (created, migrated or refused) before hours of training
        return _run(cfg, store, run_id, new, bench_config)


def _run(cfg: BenchConfig, store: Any, run_id: Optional[str], new: bool,
         bench_config: Optional[dict[str, Any]]) -> Published:
    import ray

    from cluster.eval import run as eval_on_ray
    from cluster.train import connect, run as train_on_ray
    from training.layout import RunLayout

    run = open_run(cfg, run_id, new)
    tcfg, ecfg = stage_configs(cfg, run)
    if tcfg.parallel.backend != "ray" or ecfg.parallel.backend != "ray":
        raise ConfigError("a bench runs both stages on Ray: set parallel.backend=ray in its train and eval configs "
                          "(train.overrides / eval.overrides)")
    layout = RunLayout.for_run(tcfg.output_dir, tcfg.run_name)
    print(f"==> bench {cfg.name}: run {run.id} -> {run.root}")
    info = connect(tcfg.parallel)   # one Ray for both stages
    try:
        done = STAGES.index(run.stage)
        if done < STAGES.index("trained") or not _finished(layout, tcfg):
            print(f"==> training ({tcfg.parallel.num_workers} Ray worker(s), {tcfg.train.max_steps} steps) -> "
                  f"{layout.root}")
            result = train_on_ray(tcfg)
            if result.get("stopped"):
                raise SystemExit(_stopped(result))
            run.advance("trained")
        else:
            print(f"==> training finished earlier ({tcfg.train.max_steps} steps in {layout.root})")
        results = ecfg.out_dir / "results.json"
        if done < STAGES.index("evaluated") or not results.is_file():
            print(f"==> eval: base vs every checkpoint ({ecfg.parallel.num_workers} Ray actor(s)) -> {ecfg.out_dir}")
            body = eval_on_ray(ecfg)
            run.advance("evaluated")
        else:
            body = json.loads(results.read_text())
    finally:
        if info.started_here:
            ray.shutdown()
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else None   # else looked up from the ranks' device
    pub = publish(store, run_id=run.id, bench=cfg.name, bench_config=bench_config or cfg.model_dump(mode="json"),
                  started=run.started, train_cfg=tcfg, train_dir=layout.root, eval_body=body,
                  eval_dir=ecfg.out_dir, world_size=tcfg.parallel.num_workers, regression=cfg.regression,
                  alerts_file=run.root / "alerts.json", page=Path(cfg.leaderboard) if cfg.leaderboard else None,
                  peak_per_device=peak)
    run.advance("recorded")
    return pub


def _finished(layout: Any, tcfg: RunConfig) -> bool:
    """The training run reached its last step (its result.json says so, and that checkpoint exists)."""
    try:
        body = json.loads(layout.result.read_text())
    except (OSError, ValueError):
        return False
    return body.get("steps") == tcfg.train.max_steps and not body.get("stopped") and \
        any(step == tcfg.train.max_steps for step, _ in layout.complete_checkpoints())


def _stopped(result: dict[str, Any]) -> int:
    from training.stopping import EXIT_STOPPED
    print(f"training stopped on request ({result['stopped']}); run the same command again to continue")
    return EXIT_STOPPED


def summary(pub: Published, cfg: BenchConfig) -> str:
    r = pub.record
    lines = [f"bench {cfg.name}: run {r.id} {'was already recorded' if pub.already else 'recorded'} in "
             f"{cfg.store} (status: {r.status})"]
    final = next((v for v in reversed(r.variants) if v["name"] != "base"), None)
    if final:
        for k, d in sorted(final["delta_vs_base"].items()):
            lines.append(f"  {final['name']} vs base: {k} {delta_text(d, 4)}")
    p = r.perf
    if p.get("samples_per_s"):
        lines.append(f"  training: {p['samples_per_s']:.3g} samples/s, {p['step_seconds']:.3g} s/step, MFU "
                     + (f"{p['mfu']:.1%}" if p.get("mfu") is not None else "n/a") + f" ({p.get('mfu_note', '')})")
    for a in pub.alerts:
        lines.append(f"  REGRESSION {a['key']}: {a['message']}")
    if pub.page:
        lines.append(f"  leaderboard: {pub.page}")
    return "\n".join(lines)


def _body(argv: list[str]) -> int:
    run_id, new, rest = None, False, []
    it = iter(argv)
    for a in it:
        if a == "--run-id":
            run_id = next(it, None)
            if not run_id:
                raise ConfigError("--run-id needs a value")
        elif a == "--new":
            new = True
        else:
            rest.append(a)
    if not rest:
        raise ConfigError("usage: lorabench bench CONFIG [--run-id ID] [--new] [key=value ...]")
    cfg = load_bench_config(rest[0], rest[1:])
    pub = run_bench(cfg, run_id=run_id, new=new)
    print(summary(pub, cfg))
    return EXIT_REGRESSION if pub.regressed else 0


def main(argv: Optional[list[str]] = None) -> int:
    return driver_main("cluster.bench", __doc__,
                       "usage: python -m cluster.bench CONFIG [--run-id ID] [--new] [key=value ...]", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
