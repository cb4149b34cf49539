"""Stable per-sample seeds: a pure function of (base seed, prompt id, repeat).

The same prompt and repeat get the same noise for every variant (base, LoRA, checkpoint),
whatever the worker count or order. sha256 is used because Python's hash() is salted per process.
"""

from __future__ import annotations

import hashlib


def sample_seed(base_seed: int, prompt_id: str | int, rep: int = 0) -> int:
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}:{rep}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
