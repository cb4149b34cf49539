"""Prove that a loaded adapter changes the model: nonzero weight deltas, and a different output.

Field note 1: a LoRA "applied" by a script that caught an exception produced a full evaluation
of the base model. A loaded adapter whose B matrices are all zero (a freshly initialised one,
or a run that never stepped) is the same failure in another form; both are errors here.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch

from ..precision import compute_dtype
from .errors import AdapterError
from .load import DEFAULT_ADAPTER_NAME, adapter_layers, denoiser
from .report import AdapterReport, delta_norm


def weight_deltas(model: Any, adapter_name: str = DEFAULT_ADAPTER_NAME) -> dict[str, float]:
    """``||delta W||_F`` per module (peft's own ``get_delta_weight``: scale * alpha / r * B @ A).

    Raises :class:`AdapterError` when no module carries the adapter, or when it has no effect
    (every B matrix zero, or a zero scale).
    """
    model = denoiser(model)
    layers = adapter_layers(model, adapter_name)
    if not layers:
        raise AdapterError(f"no module of {type(model).__name__} carries an adapter named {adapter_name!r}: "
                           "was it loaded (load_adapter) under that name?")
    with torch.no_grad():
        # float64 from the layer's own A, B and scaling, exactly as the report computes the
        # file's norms: peft's get_delta_weight returns fp32, whose norm drifts by ~1e-3
        # relative on a 3072x14336 layer and made correct adapters look "not applied".
        deltas = {n: delta_norm(m.lora_A[adapter_name].weight, m.lora_B[adapter_name].weight,
                                m.scaling[adapter_name]) for n, m in layers.items()}
        zero_b = all(not m.lora_B[adapter_name].weight.any() for m in layers.values())
    if zero_b:
        raise AdapterError(f"adapter has no effect: every B matrix is zero in all {len(layers)} adapted modules "
                           f"of {type(model).__name__} (a freshly initialised adapter, or training never "
                           "updated it); check that you exported the trained weights")
    if not any(deltas.values()):
        raise AdapterError(f"adapter has no effect: every weight delta of {adapter_name!r} is zero "
                           "(scale 0?); load it with a nonzero scale")
    return deltas


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run the base model: peft's per-layer switch (what diffusers' disable_adapters flips)."""
    layers = [m for m in model.modules() if hasattr(m, "enable_adapters") and hasattr(m, "lora_A")]
    before = [m.disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m, was_disabled in zip(layers, before):
            m.enable_adapters(not was_disabled)


# ------------------------------------------------------------------ fixed dummy inputs per family


def _wan_inputs(model: torch.nn.Module, g: torch.Generator) -> dict[str, torch.Tensor]:
    c = model.config
    return {"hidden_states": torch.randn(1, c.in_channels, 2, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 8, c.text_dim, generator=g),
            "timestep": torch.tensor([500.0])}


def _sd3_inputs(model: torch.nn.Module, g: torch.Generator) -> dict[str, torch.Tensor]:
    c = model.config
    return {"hidden_states": torch.randn(1, c.in_channels, 8, 8, generator=g),
            "encoder_hidden_states": torch.randn(1, 8, c.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(1, c.pooled_projection_dim, generator=g),
            "timestep": torch.tensor([500.0])}


#: family name -> builder of one small transformer input (CPU, fp32; moved to the model later)
DUMMY_INPUTS: dict[str, Callable[[torch.nn.Module, torch.Generator], dict[str, torch.Tensor]]] = {
    "wan": _wan_inputs, "sd3": _sd3_inputs}


def dummy_inputs(family: str, model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed random forward input for ``family``'s transformer, on the model's device and dtype."""
    if family not in DUMMY_INPUTS:
        raise AdapterError(f"no dummy input registered for model family {family!r} "
                           f"(known: {', '.join(sorted(DUMMY_INPUTS))}); add one to DUMMY_INPUTS")
    # The dtype of the weights the inputs meet (a bf16 Wan starts with an fp32-kept table).
    dtype, device = compute_dtype(model), next(model.parameters()).device
    raw = DUMMY_INPUTS[family](model, torch.Generator("cpu").manual_seed(seed))
    return {k: v.to(device, dtype if v.is_floating_point() else None) for k, v in raw.items()}


def verify_effect(pipe_or_model: Any, spec: Any, report: Optional[AdapterReport] = None, seed: int = 0,
                  atol: float = 0.0) -> float:
    """One forward with the adapter on and off; the max |difference| must exceed ``atol``.

    ``spec`` is a model spec (``training.models.get_spec``) or a family name. Also checks the
    weight deltas (:func:`weight_deltas`) and, given the load ``report``, that the model's
    deltas are the ones the file implies. Stores the difference in ``report`` and returns it.
    """
    model = denoiser(pipe_or_model)
    name = report.adapter_name if report is not None else DEFAULT_ADAPTER_NAME
    family = spec if isinstance(spec, str) else spec.name
    deltas = weight_deltas(model, name)
    inputs = dummy_inputs(family, model, seed)
    with torch.no_grad():
        on = model(**inputs, return_dict=False)[0]
        with adapters_disabled(model):
            off = model(**inputs, return_dict=False)[0]
    diff = float((on.float() - off.float()).abs().max())
    if report is not None:
        report.effect_max_diff = diff
        _compare_deltas(report, deltas, rtol=delta_rtol(model, name))
    if not diff > atol:
        raise AdapterError(f"adapter {name!r} has no effect on the output: max |with - without| = {diff:.3e} "
                           f"<= atol {atol:g} on a fixed {family} input (seed {seed})", report)
    return diff


def delta_rtol(model: torch.nn.Module, adapter_name: str) -> float:
    """Relative tolerance between the file's and the model's delta norms, from the LoRA dtype.

    Both norms are computed in float64; they can only differ by the rounding of A and B into
    the dtype the model holds them in (identical when that is the file's dtype). Rounding each
    element to relative eps/2 moves a norm of B @ A by at most ~eps; 4 eps leaves room.
    """
    dtypes = {m.lora_A[adapter_name].weight.dtype for m in adapter_layers(model, adapter_name).values()}
    return 4 * max((torch.finfo(d).eps for d in dtypes), default=torch.finfo(torch.float32).eps)


def _compare_deltas(report: AdapterReport, deltas: dict[str, float], rtol: float) -> None:
    # Both sides are float64 norms (report.delta_norm): the file's tensors vs the model's layers.
    off = [n for n, v in report.delta_norms.items()
           if abs(deltas.get(n, 0.0) - v) > rtol * max(v, 1e-12)]
    if off:
        n = off[0]
        raise AdapterError(f"{len(off)} modules of the model do not carry the delta the file implies (first: "
                           f"`{n}`: {deltas.get(n, 0.0):.4e} in the model, {report.delta_norms[n]:.4e} from "
                           f"{report.source}); was the model modified after loading?", report)
