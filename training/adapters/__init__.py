"""Adapter truth: read LoRA files of any dialect, load them completely or fail with a report,
prove their effect, and convert between dialects (field notes 1 and 2)."""

from .convert import convert
from .errors import AdapterError
from .load import inspect_adapter, load_adapter, loaded_adapters, unload_adapter
from .report import AdapterReport
from .verify import verify_effect, weight_deltas

__all__ = ["AdapterError", "AdapterReport", "convert", "inspect_adapter", "load_adapter", "loaded_adapters",
           "unload_adapter", "verify_effect",
           "weight_deltas"]
