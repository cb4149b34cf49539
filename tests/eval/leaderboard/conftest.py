"""Leaderboard data for the page tests: three nightly runs of one bench with real media on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = "tiny"
RUN_IDS = ("tiny-20261202-140000", "tiny-20261201-140000", "tiny-20261130-140000")  # newest first
VARIANTS = ("base", "demo-wan@step-00000010@1", "demo-wan@step-00000020@1")
FINAL = VARIANTS[-1]
# The second prompt tries to end a script: the page must show it as text, never run it.
PROMPTS = {"p000": "a red circle moving left",
           "p001": 'a blue square </script><script>window.__errors.push("injected")</script> moving up'}
SEED = 7
DIRECTIONS = {"clip_score": 1, "fvd": -1}


def _frames(variant_index: int, prompt_index: int) -> np.ndarray:
    """8 frames of a moving square: the colour says the variant (grey base, green/magenta LoRA),
    so base and LoRA media differ at a glance in the screenshot."""
    colour = [(150, 150, 150), (40, 200, 80), (220, 40, 200)][variant_index]
    frames = np.full((8, 48, 64, 3), 20, np.uint8)
    for f in range(8):
        x = 4 + 5 * f if prompt_index == 0 else 40 - 4 * f
        frames[f, 12:36, x:x + 20] = colour
    return frames


def _stat(value: float | None, half: float | None = 0.02, n: int = 2) -> dict[str, Any]:
    if value is None:
        return {"value": None, "lo": None, "hi": None, "n": 0}
    return {"value": value, "lo": value - half if half else None, "hi": value + half if half else None, "n": n}


def _delta(value: float, lo: float, hi: float) -> dict[str, Any]:
    return {"value": value, "lo": lo, "hi": hi, "significant": not (lo <= 0 <= hi)}


def _run(run_id: str, started: str, status: str, clip: float, fvd: float, samples_per_s: float | None,
         media_root: Path) -> dict[str, Any]:
    from training.media_io import encode_mp4, encode_png

    samples = []
    for vi, variant in enumerate(VARIANTS):
        folder = media_root / run_id / variant
        folder.mkdir(parents=True, exist_ok=True)
        for pi, (pid, prompt) in enumerate(PROMPTS.items()):
            # p000 is a video, p001 an image: the page must handle both kinds.
            frames = _frames(vi, pi)
            path = folder / (f"{pid}-s{SEED}.mp4" if pi == 0 else f"{pid}-s{SEED}.png")
            path.write_bytes(encode_mp4(frames, fps=8) if pi == 0 else encode_png(frames[0]))
            samples.append({"sample_id": f"{pid}-s{SEED}", "prompt_id": pid, "prompt": prompt, "seed": SEED,
                            "variant": variant, "media": str(path), "kind": "video" if pi == 0 else "image"})
    base = {"name": "base", "step": None, "scale": None, "group": None,
            "metrics": {"clip_score": _stat(0.20), "fvd": _stat(400.0, 30.0)},
            "delta_vs_base": {}, "delta_vs_previous": None}
    mid = {"name": VARIANTS[1], "step": 10, "scale": 1.0, "group": "demo-wan",
           "metrics": {"clip_score": _stat(clip - 0.03), "fvd": _stat(fvd + 20, 30.0)},
           "delta_vs_base": {"clip_score": _delta(clip - 0.23, -0.01, clip - 0.20),
                             "fvd": _delta(fvd - 380, fvd - 420, fvd - 340)},
           "delta_vs_previous": None}
    final = {"name": FINAL, "step": 20, "scale": 1.0, "group": "demo-wan",
             "metrics": {"clip_score": _stat(clip), "fvd": _stat(fvd, 30.0)},
             "delta_vs_base": {"clip_score": _delta(clip - 0.20, clip - 0.22, clip - 0.18),
                               "fvd": _delta(fvd - 400, fvd - 440, fvd - 360)},
             "delta_vs_previous": {"against": VARIANTS[1], "metrics": {
                 "clip_score": _delta(0.03, -0.01, 0.07), "fvd": _delta(-20.0, -60.0, 20.0)}}}
    alerts = ([{"metric": "fvd", "variant": FINAL, "value": fvd, "baseline": 350.0, "threshold": 0.1,
                "message": f"fvd of {FINAL} rose {fvd - 350.0:.0f} over the baseline"}]
              if status == "regressed" else [])
    return {
        "id": run_id, "bench": BENCH, "status": status, "started": started,
        "finished": started.replace("14:00:00", "14:05:00"),
        "git": {"sha": "0123456789abcdef0123456789abcdef01234567", "dirty": status == "regressed"},
        "config_hash": "c0ffee" * 4, "config": {"train": {"lr": 1e-4, "steps": 20}, "eval": {"prompts": 2}},
        "model": {"family": "wan", "path": "/models/tiny-wan", "sha256": {"transformer": "ab" * 32, "vae": "cd" * 32}},
        "adapters": {VARIANTS[1]: "ef" * 32, FINAL: "12" * 32},
        "dataset_hash": "da7a" * 8, "seeds": {"train": 0, "eval": 0},
        "libraries": {"torch": "2.13.0+cpu", "plotly": "7.1.0"},
        "hardware": {"platform": "Linux-x86_64", "gpus": [], "cpu_count": 2},
        "perf": {"samples_per_s": samples_per_s, "step_seconds": 0.5, "peak_memory_bytes": {"0": 3 << 29},
                 "mfu": None, "mfu_note": "no GPU: MFU not measured"},
        "loss": [[s, 1.0 / (1 + 0.1 * s) + 0.01 * (s % 3)] for s in range(1, 21)],
        "variants": [base, mid, final],
        "samples": samples,
        "alerts": alerts,
    }


def make_leaderboard_data(media_root: Path) -> dict[str, Any]:
    """Three runs of one bench, newest first; the newest regressed (fvd up) with an alert. The
    sortable columns are chosen so that every sort changes the default order, and the middle run
    has no samples/s (missing values sort last both ways)."""
    runs = [
        _run(RUN_IDS[0], "2026-12-02T14:00:00+00:00", "regressed", 0.28, 450.0, 9.0, media_root),
        _run(RUN_IDS[1], "2026-12-01T14:00:00+00:00", "ok", 0.25, 350.0, None, media_root),
        _run(RUN_IDS[2], "2026-11-30T14:00:00+00:00", "ok", 0.30, 360.0, 10.5, media_root),
    ]
    return {"generated": "2026-12-02T14:10:00+00:00", "runs": runs, "directions": dict(DIRECTIONS)}


@pytest.fixture(scope="module")
def leaderboard_data(tmp_path_factory) -> dict[str, Any]:
    return make_leaderboard_data(tmp_path_factory.mktemp("leaderboard-media"))
