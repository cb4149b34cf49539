"""The precompute stage on a real local Ray: an actor pool writes the same cache bytes as one
process, and training reads it back."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import tiny_config

pytestmark = pytest.mark.distributed  # a real multi-process cluster: outside the quick tier


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*.tar"))}


def test_two_ray_actors_write_the_bytes_of_one_process(tiny_wan, video_shards, tmp_path):
    from cluster.precompute import run
    from training.cache.precompute import plan_precompute, run_local

    local = tmp_path / "local"
    run_local(plan_precompute(tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={local}")), device="cpu")
    ray_cache = tmp_path / "ray"
    cfg = tiny_config("wan", tiny_wan, video_shards, tmp_path, f"data.cache={ray_cache}", "parallel.backend=ray",
                      "parallel.num_workers=2", "parallel.cpus_per_worker=1")
    totals = run(cfg, progress=False)
    assert (totals["shards"], totals["encoded"]) == (3, 48)
    assert _shards(ray_cache) == _shards(local) and len(_shards(local)) == 3
    assert run(cfg, progress=False)["encoded"] == 0  # a re-run finds everything current
