"""Helpers shared by the eval tests (and tests/cluster's eval tests): a tiny-wan eval config
pointed at fixture paths, the sample bytes of an eval folder, tiny random metric models."""

from pathlib import Path

import pytest

from ..conftest import CONFIGS

TINY_EVAL = CONFIGS / "eval" / "tiny-wan.yaml"
PROMPTS = "a red circle moving left\na blue square moving up\n"


def eval_cfg(tiny_wan, tmp_path, *overrides, prompts=PROMPTS, run=None):
    """The shipped tiny-wan eval config on the fixture model, in-process, metrics off, 3 steps."""
    from eval.config import load_eval_config
    pfile = tmp_path / "prompts.txt"
    if not pfile.exists():
        pfile.write_text(prompts)
    adapters = f"variants.adapters=[{run}]" if run else "variants.adapters=[]"
    return load_eval_config(TINY_EVAL, [f"model.path={tiny_wan}", f"output_dir={tmp_path / 'evals'}",
                                        f"prompts.file={pfile}", adapters, "reference.shards=null",
                                        "parallel.backend=none", "metrics.enabled=false", "sampling.steps=3",
                                        *overrides])


def media_bytes(root: Path) -> dict[str, bytes]:
    """Every sample video of an eval folder, by path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "samples").rglob("*.mp4"))}


@pytest.fixture(scope="session")
def tiny_metric_models(tmp_path_factory):
    """Tiny RANDOM CLIP folder, I3D state dict and TorchScript Inception (eval.metrics.tiny)."""
    from eval.metrics.tiny import make_tiny_metrics
    return make_tiny_metrics(tmp_path_factory.mktemp("metric-models"))
