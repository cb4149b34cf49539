"""Model registry: ``get_spec("wan")`` instead of ``if family == "wan"`` anywhere else."""

from __future__ import annotations

import difflib
from typing import Callable

from .base import Conditions, LatentGeometry, ModelFolderError, ModelSpec, SamplingDefaults

_REGISTRY: dict[str, Callable[[], ModelSpec]] = {}


def register(name: str, factory: Callable[[], ModelSpec]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model family {name!r} registered twice")
    _REGISTRY[name] = factory


def families() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; unknown names list the choices."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, families(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelFolderError(f"unknown model family {name!r}{hint}; registered: {', '.join(families())}")
    return _REGISTRY[name]()


def spec_for_folder(path: str) -> ModelSpec:
    """The spec whose pipeline class is named in ``path``/model_index.json."""
    import json
    from pathlib import Path

    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise ModelFolderError(f"{path} is not a diffusers model folder ({index.name} is missing); "
                               "make a tiny one with: lorabench make-tiny --family wan --out DIR")
    cls_name = json.loads(index.read_text()).get("_class_name")
    for name in families():
        spec = get_spec(name)
        if spec.pipeline_cls.__name__ == cls_name:
            return spec
    raise ModelFolderError(f"{index}: pipeline {cls_name!r} has no model spec; supported families: "
                           f"{', '.join(families())}")


def _register_builtin() -> None:
    # Imported lazily by factory so that `lorabench --help` does not import diffusers.
    def wan() -> ModelSpec:
        from .wan import WanSpec
        return WanSpec()

    def sd3() -> ModelSpec:
        from .sd3 import SD3Spec
        return SD3Spec()

    register("wan", wan)
    register("sd3", sd3)


_register_builtin()

__all__ = ["Conditions", "LatentGeometry", "ModelFolderError", "ModelSpec", "SamplingDefaults", "families", "get_spec", "register",
           "spec_for_folder"]
