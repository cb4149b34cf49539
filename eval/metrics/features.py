"""Per-sample features, extracted in batches and cached on disk.

Features are written to ``features/<extractor>/<group>.safetensors`` (group: a variant or
``reference``) with the sample ids, the media sha256s and the extractor's description in the
metadata. A cache is reused only when all three match, so ``lorabench eval metrics --from DIR``
recomputes numbers (other bootstrap count, KID subsets...) without touching a network, and a
changed sample or model invalidates exactly what it must.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from training.console import progress as progress_bar
from training.fsio import atomic_write_bytes, sha256_json

from ..manifest import EvalLayout
from .spec import Batch, Extractor, Features

Items = Callable[[], Iterator[tuple[str, Optional[np.ndarray], Any]]]   # (id, media or None, record or skip reason)


def _load_cache(path: Path, meta: dict[str, str]) -> Optional[Features]:
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        stored = f.metadata() or {}
    if any(stored.get(k) != v for k, v in meta.items()):
        return None
    arrays = {k: v.numpy() for k, v in load_file(str(path)).items()}
    return Features(json.loads(stored["ids"]), arrays, json.loads(stored.get("skipped", "{}")))


def _save_cache(path: Path, meta: dict[str, str], feats: Features) -> None:
    import torch
    from safetensors.torch import save
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.arrays.items()}
    atomic_write_bytes(path, save(tensors, metadata={**meta, "ids": json.dumps(feats.ids),
                                                     "skipped": json.dumps(feats.skipped)}))


def run_stage(key: str, extractor: Extractor, names: tuple[str, ...], layout: EvalLayout, group: str,
              source_key: str, items: Items, batch_size: int, total: Optional[int], progress: bool) -> Features:
    """``extractor``'s features for ``group``: from the cache when valid, else computed and saved.

    ``names`` are the arrays the extractor must yield; ``items`` yields (id, media or None,
    record or skip reason); ``source_key`` identifies the inputs (ids + media sha256s, or the
    reference shard list).
    """
    path = layout.features(key, group)
    meta = {"source": source_key, "extractor": sha256_json(extractor.describe)}
    cached = _load_cache(path, meta)
    if cached is not None:
        return cached
    ids: list[str] = []
    parts: dict[str, list[np.ndarray]] = {}
    skipped: dict[str, list[str]] = {}
    batch: Batch = []

    def flush() -> None:
        if not batch:
            return
        out = extractor.fn(batch)
        if set(out) != set(names):
            raise RuntimeError(f"extractor {key!r} yielded {sorted(out)}, its spec declares {sorted(names)}")
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
        ids.extend(i for i, _, _ in batch)
        batch.clear()

    bar = progress_bar(total=total, desc=f"{key}:{group}", unit="sample", disable=not progress, leave=False)
    for sid, media, extra in items():
        bar.update(1)
        if media is None:
            skipped.setdefault(str(extra), []).append(sid)
            continue
        batch.append((sid, media, extra))
        if len(batch) >= batch_size:
            flush()
    flush()
    bar.close()
    feats = Features(ids, {k: np.concatenate(v) for k, v in parts.items()}, skipped)
    _save_cache(path, meta, feats)
    return feats
