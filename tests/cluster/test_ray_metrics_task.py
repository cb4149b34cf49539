"""Metrics in a Ray task holding a GPU (a driver without one): same numbers as on the driver.

The GPU here is a logical Ray resource on a CPU machine, so the task runs the same CPU code:
what is tested is the plumbing (plan and records shipped to the task, results written from it).
"""

import json
import os

import pytest

from ..conftest import REPO
from ..eval.conftest import eval_cfg

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(300)]  # an unplaceable task would wait forever


@pytest.fixture(scope="module")
def ray_with_a_gpu_slot():
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, runtime_env={"env_vars": {
                 "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_metrics_task_on_a_gpu_node_equals_the_driver(ray_with_a_gpu_slot, tiny_wan, tiny_wan_run, tmp_path):
    from cluster.eval import _finish_on_gpu
    from eval.generation import generate, make_plan, run_local
    from eval.results import finish
    cfg = eval_cfg(tiny_wan, tmp_path, "metrics.enabled=true", "metrics.bootstrap=20", "metrics.clip.path=null",
                   "metrics.fvd.i3d_path=null", run=tiny_wan_run)  # sharpness: no metric weights needed
    plan = make_plan(cfg)
    records = generate(plan, run_local, progress=False)
    here = finish(plan, records, progress=False)
    there = _finish_on_gpu(plan, records, progress=False)
    assert here["variants"] and here["variants"] == there["variants"]
    assert json.loads((plan.layout.root / "results.json").read_text())["variants"] == here["variants"]
    assert any(m for v in here["variants"].values() for m in v["metrics"]), "some metric was computed"
