"""Typed training configuration: YAML + dotted ``key=value`` overrides, validated up front.

Every field carries a one-line description (shown by ``lorabench train --help-config``).
Validation happens before any model or data is touched, and errors name the dotted key,
the allowed range and, for unknown keys, the closest valid key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import yaml
from pydantic_core import to_jsonable_python
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from training.errors import LorabenchError


class ConfigError(LorabenchError, ValueError):
    """A configuration problem the user must fix; the message says where and how."""


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type admits a YAML boolean (``bool`` or a bool ``Literal`` somewhere in it)."""
    if annotation is bool or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in get_args(annotation))
    return any(_accepts_bool(a) for a in get_args(annotation))


def _contains_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(_contains_bool(v) for v in value)


class Section(BaseModel):
    """Base of every config section (train and eval): strict where YAML is lax.

    - ``extra="forbid"``: a typo such as ``optim.lrr`` must fail, never be silently ignored.
    - no ``nan``/``inf`` floats: they are accepted by YAML (``.nan``) and by pydantic and only
      show up later as a NaN loss.
    - no booleans for numbers: pydantic takes ``true`` as 1, so ``lora.rank: true`` trained rank 1.
    - no empty list where an empty list means nothing (``lora.target_modules: []`` trained the
      default targets while config.yaml recorded ``[]``): use null for the default.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_values(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        if _contains_bool(value) and not _accepts_bool(field.annotation):
            raise ValueError("a boolean is not a number here; write the number itself")
        if isinstance(value, list) and not value:
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            if default != []:
                meaning = "" if field.is_required() else ", or null for the default"
                raise ValueError(f"an empty list means nothing here: list at least one value{meaning}")
        return value


# Marks a field that must not change between a checkpoint and the run resuming from it
# (the data order, the loss, the optimizer trajectory depend on it). The list of invariants is
# read from the model (:func:`resume_invariants`), so renaming a field cannot drop it silently.
RESUME_INVARIANT = {"resume_invariant": True}


def resume_invariants(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Dotted names of the fields marked ``RESUME_INVARIANT`` (a marked section counts whole)."""
    model = model or RunConfig
    out = []
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("resume_invariant"):
            out.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            out.extend(resume_invariants(field.annotation, f"{prefix}{name}."))
    return out


_MISSING = object()


def setting(data: dict[str, Any], dotted: str) -> Any:
    """``data[a][b]`` for ``a.b`` in a config dict; a key an older config lacks reads as the
    field's default (as JSON), so adding a field does not make old checkpoints unresumable."""
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            return _default(dotted)
    return value


def _default(dotted: str) -> Any:
    model: Any = RunConfig
    *sections, leaf = dotted.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    field = model.model_fields[leaf]  # KeyError: not a config field
    value = None if field.is_required() else field.get_default(call_default_factory=True)
    # As the config dict holds it (JSON): a tuple default such as optim.betas reads as a list.
    return to_jsonable_python(value)


class ModelConfig(Section):
    family: str = Field("wan", json_schema_extra=RESUME_INVARIANT, description="Model family in the registry (wan, sd3).")
    path: str = Field(..., json_schema_extra=RESUME_INVARIANT, description="Local diffusers folder with model_index.json.")
    revision: Optional[str] = Field(None, description="Base model revision, recorded in manifests.")
    attention: Literal["auto", "sdpa", "xformers"] = Field(
        "auto", description="Attention backend: xformers on CUDA when installed, else SDPA."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    mixed_precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", json_schema_extra=RESUME_INVARIANT, description="Denoiser weights and compute dtype (autocast); LoRA masters and optimizer "
                            "state stay fp32 under every engine."
    )
    vae_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", json_schema_extra=RESUME_INVARIANT, description="VAE weights and encode dtype. fp32 as in Wan's reference VAE and diffusers' docs."
    )
    text_encoder_dtype: Optional[Literal["fp32", "bf16", "fp16"]] = Field(
        None, json_schema_extra=RESUME_INVARIANT, description="Text encoder dtype; null: the same as mixed_precision (Wan's reference runs umT5 "
                          "in bf16)."
    )
    offload_encoders: bool = Field(
        False, description="Keep the text encoder(s) and VAE in CPU memory and move each to the accelerator "
                           "only while it encodes (saves their bytes on the GPU, costs a copy per step)."
    )

    @field_validator("family")
    @classmethod
    def _registered(cls, v: str) -> str:
        from training.models import families  # the registry imports no model code until asked
        if v not in families():
            close = difflib.get_close_matches(v, families(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{v!r} is not a registered model family{hint}; registered: {', '.join(families())}")
        return v


class LoraConfig(Section):
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Optional[list[str]] = Field(
        None, description="Module names to adapt; null uses the model spec's default."
    )
    init_seed: Optional[int] = Field(
        None, description="Seed for LoRA A init; null uses the run seed."
    )


class DataConfig(Section):
    shards: Union[str, list[str]] = Field(
        ..., json_schema_extra=RESUME_INVARIANT, description="Webdataset shards: a directory, a brace pattern or a list of paths/URLs."
    )
    width: int = Field(64, ge=8, le=8192, json_schema_extra=RESUME_INVARIANT, description="Training width in pixels.")
    height: int = Field(64, ge=8, le=8192, json_schema_extra=RESUME_INVARIANT, description="Training height in pixels.")
    frames: int = Field(1, ge=1, le=1024, json_schema_extra=RESUME_INVARIANT, description="Frames per clip (video families).")
    shuffle_buffer: int = Field(64, ge=0, json_schema_extra=RESUME_INVARIANT, description="Sample shuffle buffer size (0 disables).")
    prefetch: int = Field(2, ge=0, le=64, description="Batches decoded ahead on a background thread (0: inline).")
    max_bad_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="Fail the run when skipped samples exceed this fraction."
    )
    max_text_length: Optional[int] = Field(
        None, ge=1, json_schema_extra=RESUME_INVARIANT, description="Text encoder sequence length; null uses the spec default."
    )
    fps: Optional[float] = Field(
        None, gt=0, le=240, json_schema_extra=RESUME_INVARIANT, description="Resample clips to this frame rate (nearest frame by timestamp) before "
                                        "taking data.frames; null: the clip's native rate (set it to the model's "
                                        "rate: 16 for Wan2.1, 24 for Wan2.2-TI2V-5B)."
    )
    cache: Optional[str] = Field(
        None, description="Latent cache folder made by `lorabench precompute` (VAE posteriors and text "
        "embeddings of data.shards): training reads it instead of decoding and encoding media, and never "
        "loads the VAE or text encoders. Refused when made with other settings (the field is named).")
    long_captions: Literal["truncate", "skip", "error"] = Field(
        "truncate", json_schema_extra=RESUME_INVARIANT, description="Captions over the text encoder's token limit: train on their first tokens "
                                "(counted as caption_truncated), skip the sample (counted as caption_too_long), "
                                "or stop with an error."
    )

    @field_validator("shards")
    @classmethod
    def _shards_named(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        items = [v] if isinstance(v, str) else list(v)  # [] is refused by Section's empty-list rule
        if any(not item.strip() for item in items):
            raise ValueError("an empty shard path: name a directory, a brace pattern or a list of tar paths/URLs")
        return v


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0.0, le=1.0, json_schema_extra=RESUME_INVARIANT, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra=RESUME_INVARIANT, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), json_schema_extra=RESUME_INVARIANT, description="AdamW betas.")
    eps: float = Field(1e-8, gt=0.0, json_schema_extra=RESUME_INVARIANT, description="AdamW epsilon.")
    warmup_steps: int = Field(0, ge=0, json_schema_extra=RESUME_INVARIANT, description="Linear warm-up steps.")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", json_schema_extra=RESUME_INVARIANT, description="Decay after warm-up."
    )
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, json_schema_extra=RESUME_INVARIANT, description="Final lr as a fraction of lr.")
    max_grad_norm: Optional[float] = Field(1.0, gt=0.0, description="Gradient clipping; null disables.")

    @model_validator(mode="after")
    def _betas_in_range(self) -> "OptimConfig":
        for b in self.betas:
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas must each be in [0, 1), got {list(self.betas)}")
        return self


class TrainConfig(Section):
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train.")
    batch_size: int = Field(1, ge=1, json_schema_extra=RESUME_INVARIANT, description="Samples per micro-batch.")
    grad_accum: int = Field(1, ge=1, json_schema_extra=RESUME_INVARIANT, description="Micro-batches per optimizer step.")
    resume: Optional[str] = Field(
        None, description="null (fresh run), 'auto' (latest complete checkpoint) or a checkpoint path."
    )
    timestep_sampling: Literal["logit_normal", "uniform"] = Field(
        "logit_normal", json_schema_extra=RESUME_INVARIANT, description="How flow-matching sigmas are drawn (SD3 paper, sec. 3.1)."
    )
    logit_mean: float = Field(0.0, json_schema_extra=RESUME_INVARIANT, description="Mean of the logit-normal sigma distribution.")
    logit_std: float = Field(1.0, gt=0.0, json_schema_extra=RESUME_INVARIANT, description="Std of the logit-normal sigma distribution.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    torch_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads; null keeps default.")


class CheckpointConfig(Section):
    every_steps: int = Field(500, ge=1, description="Save a checkpoint every N optimizer steps.")
    keep_last: Optional[int] = Field(3, ge=1, description="Keep the newest N checkpoints; null keeps all.")
    save_final: bool = Field(True, description="Always checkpoint the last step.")


class LogConfig(Section):
    every_steps: int = Field(1, ge=1, description="Write metrics every N optimizer steps.")
    tensorboard: bool = Field(True, description="Write TensorBoard events under logs/.")
    progress: bool = Field(True, description="Show a progress bar.")


class ParallelSettings(Section):
    """Where work runs on Ray: shared by training (Ray Train workers) and eval (actors), so the
    launcher code that connects to Ray and checks resources takes one type."""

    num_workers: int = Field(1, ge=1, le=4096, description="Ray workers (one rank or actor each; one GPU each "
                             "with use_gpu).")
    use_gpu: bool = Field(False, description="Give each Ray worker one GPU (NCCL for training); false: CPU workers.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs reserved per Ray worker (fractions allowed; "
                                   "an eval actor uses max(1, floor) torch threads).")
    ray_address: Optional[str] = Field(
        None, description="Ray cluster to join; null uses RAY_ADDRESS, else starts a local Ray on 127.0.0.1."
    )

    @property
    def threads(self) -> int:
        """Torch threads for one worker: its whole CPUs, at least one."""
        return max(1, int(self.cpus_per_worker))


class ParallelConfig(ParallelSettings):
    backend: Literal["none", "ray"] = Field(
        "none", description="'none': this process (or torchrun/accelerate launch ranks); 'ray': a Ray Train job."
    )
    max_failures: int = Field(
        0, ge=-1, description="Restarts of the worker group after a worker dies (-1: unlimited); each resumes "
                              "from the latest complete checkpoint."
    )


class DeepSpeedConfig(Section):
    config: Optional[str] = Field(
        None, description="DeepSpeed JSON (e.g. configs/deepspeed/zero2.json); null with zero_stage null: no DeepSpeed."
    )
    zero_stage: Optional[Literal[0, 1, 2, 3]] = Field(
        None, description="ZeRO stage; overrides the JSON's zero_optimization.stage (a stage alone uses defaults)."
    )

    @property
    def enabled(self) -> bool:
        return self.config is not None or self.zero_stage is not None


class DebugConfig(Section):
    crash_at_step: Optional[int] = Field(
        None, ge=1, description="Fault injection: SIGKILL one worker once, right after this optimizer step."
    )
    crash_rank: int = Field(0, ge=0, description="Rank that crash_at_step kills.")
    crash_point: Literal["after_step", "during_save"] = Field(
        "after_step", description="Kill after the step, or halfway through writing that step's checkpoint."
    )


class RunConfig(Section):
    run_name: str = Field(..., min_length=1, description="Name of the run directory.")
    output_dir: str = Field("runs", description="Parent directory of run directories.")
    seed: int = Field(0, ge=0, json_schema_extra=RESUME_INVARIANT, description="Seed for data order, noise and LoRA init.")
    model: ModelConfig
    lora: LoraConfig = Field(default_factory=LoraConfig, json_schema_extra=RESUME_INVARIANT)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)

    @model_validator(mode="after")
    def _names_are_safe(self) -> "RunConfig":
        if "/" in self.run_name or self.run_name in {".", ".."}:
            raise ValueError(f"run_name must be a plain directory name, got {self.run_name!r}")
        par = self.parallel
        if par.backend == "none" and par.num_workers > 1:
            raise ValueError(
                f"parallel.num_workers={par.num_workers} needs parallel.backend=ray (or keep 1 and start "
                f"the ranks yourself: torchrun --nproc-per-node {par.num_workers} -m training CONFIG)")
        if self.debug.crash_at_step is not None and self.debug.crash_rank >= par.num_workers \
                and par.backend == "ray":
            raise ValueError(f"debug.crash_rank={self.debug.crash_rank} but only {par.num_workers} worker(s)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- loading


def all_keys(model_cls: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every valid dotted key of a config class (used for did-you-mean hints)."""
    keys = []
    for name, field in model_cls.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(all_keys(ann, dotted + "."))
    return keys


def _closest(key: str, model_cls: type[BaseModel] = RunConfig) -> str:
    candidates = all_keys(model_cls)
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not match:  # compare the last segment too: 'optim.learning_rate' -> 'optim.lr' is a stretch
        leaf = key.rsplit(".", 1)[-1]
        match = difflib.get_close_matches(
            leaf, [c.rsplit(".", 1)[-1] for c in candidates], n=1, cutoff=0.6
        )
        match = [c for c in candidates if c.rsplit(".", 1)[-1] == match[0]] if match else []
    return match[0] if match else ""


def format_errors(err: ValidationError, source: str, model_cls: type[BaseModel] = RunConfig) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = _closest(key, model_cls)
            lines.append(
                f"  unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else "")
            )
        elif e["type"] == "missing":
            lines.append(f"  missing required key '{key}'")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
            lines.append(f"  {key}: {msg}{got_s}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key segment")
    # YAML parses numbers, bools, null and [lists]; pydantic then coerces e.g. '1e-3' to float.
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (validation happens afterwards)."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {item!r}: '{'.'.join(path[: i + 1])}' is a value, not a section"
                )
            node = child
        node[path[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}:{line}: key {key!r} is repeated (first at line {seen[key]}); "
                                  "YAML would silently keep the last one: delete one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Union[str, Path]) -> Any:
    """Parse a YAML file safely, refusing repeated keys; errors are ConfigErrors naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read it as text ({e})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(p)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()


def load_config(path: Union[str, Path, None], overrides: Optional[list[str]] = None,
                base: Optional[dict[str, Any]] = None) -> RunConfig:
    """Load a YAML config (or ``base`` dict), apply overrides and validate.

    Raises ConfigError with every problem listed by dotted key.
    """
    return load_typed(RunConfig, path, overrides, base, shipped="configs/train/")


M = TypeVar("M", bound=BaseModel)


def load_typed(model_cls: type[M], path: Union[str, Path, None], overrides: Optional[list[str]] = None,
               base: Optional[dict[str, Any]] = None, shipped: str = "configs/") -> M:
    """YAML file (or ``base`` dict) + dotted overrides -> a validated ``model_cls``.

    Shared by the train and eval configs so both report errors the same way.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (shipped configs live in {shipped})")
        data = read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
        source = str(p)
    else:
        data, source = dict(base or {}), "<dict>"
    data = apply_overrides(data, list(overrides or []))
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source, model_cls)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe_fields(model_cls: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Human-readable ``key: description (default)`` lines for --help-config."""
    out = []
    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(describe_fields(ann, dotted + "."))
        else:
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            out.append(f"{dotted:32s} {field.description or ''} [{default}]")
    return out
