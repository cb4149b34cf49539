"""LoRA key dialects: read any adapter file and normalise its keys to (module, kind).

Every tool writes the same low-rank tensors under different names:

=========  ==========================================================  =======================
dialect    example key                                                 alpha lives in
=========  ==========================================================  =======================
peft       ``base_model.model.blocks.0.attn1.to_q.lora_A.weight``      adapter_config.json
diffusers  ``transformer.blocks.0.attn1.to_q.lora_A.weight``           safetensors metadata
kohya      ``lora_unet_blocks_0_attn1_to_q.lora_down.weight``          ``<name>.alpha`` tensors
comfyui    ``diffusion_model.blocks.0.attn1.to_q.lora_down.weight``    ``<name>.alpha`` tensors
diffsynth  ``blocks.0.self_attn.q.lora_A.default.weight`` (no prefix)  nowhere (alpha = rank)
=========  ==========================================================  =======================

Names are resolved against the *target model's* module names: kohya's underscores are looked
up in a table built from the model (never split by guessing), and original-Wan names
(``self_attn.q``) are mapped to diffusers names (``attn1.to_q``) by a per-family table.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch

from ..fsio import sha256_file
from ..layout import MANIFEST
from .errors import AdapterError, KeyIssue
from .files import (COMFYUI_PREFIX, DENOISER_PREFIXES, DIFFUSERS_META, DIFFUSERS_WEIGHTS, KOHYA_PREFIXES, PEFT_CONFIG,
                    PEFT_PREFIX, PEFT_WEIGHTS, PEFT_WEIGHTS_BIN)
from .names import ModelInfo, natural_key

PEFT_DIR_FILES = (PEFT_WEIGHTS, PEFT_WEIGHTS_BIN)


# ------------------------------------------------------------------ reading files


@dataclass
class RawAdapter:
    """Tensors and side information exactly as stored, before any renaming."""

    path: Path                       # the tensor file actually read
    sha256: str
    tensors: dict[str, torch.Tensor]
    config: Optional[dict[str, Any]]  # LoRA config (peft adapter_config.json or diffusers metadata)
    config_source: Optional[str]
    manifest: Optional[dict[str, Any]] = None  # lorabench checkpoint manifest, when there is one


def _pick_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise AdapterError(f"adapter not found: {path} (give a .safetensors file, a PEFT folder or a "
                           "lorabench checkpoint folder)")
    # A lorabench checkpoint holds both layouts; the PEFT pair is preferred (its config is a file).
    for name in (*PEFT_DIR_FILES, DIFFUSERS_WEIGHTS):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise AdapterError(f"{path}: no adapter file found (looked for {', '.join(PEFT_DIR_FILES)}, "
                       f"{DIFFUSERS_WEIGHTS}, or a single *.safetensors; found {[p.name for p in found]})")


def _read_tensors(f: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if f.suffix in (".bin", ".pt", ".pth"):
        try:  # weights_only: never unpickle arbitrary objects from an adapter file
            sd = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:
            raise AdapterError(f"{f}: cannot be read as a torch weights file ({type(e).__name__}: {e}); "
                               "re-export it as safetensors") from e
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            raise AdapterError(f"{f}: expected a flat dict of tensors, got {type(sd).__name__}")
        return dict(sd), {}
    from safetensors import safe_open
    try:
        with safe_open(str(f), framework="pt") as st:
            return {k: st.get_tensor(k) for k in st.keys()}, dict(st.metadata() or {})
    except Exception as e:  # SafetensorError, OSError, ...: truncated or not safetensors at all
        raise AdapterError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e}); the file is "
                           "corrupt or truncated: re-download or re-export it") from e


def _json_error(where: str, e: json.JSONDecodeError, fix: str) -> AdapterError:
    return AdapterError(f"{where} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}, "
                        f"character {e.pos}); {fix}")


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; any problem is one AdapterError naming the file and position."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} cannot be read as UTF-8 text ({type(e).__name__}: {e}); {fix}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(str(path), e, fix) from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    return data


def _diffusers_config(meta: dict[str, str], f: Path) -> Optional[dict[str, Any]]:
    if DIFFUSERS_META not in meta:
        return None
    fix = "re-export the file (diffusers' save_lora_weights writes this metadata) or remove the metadata key"
    try:
        raw = json.loads(meta[DIFFUSERS_META])
    except json.JSONDecodeError as e:
        raise _json_error(f"{f}: metadata {DIFFUSERS_META!r}", e, fix) from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{f}: metadata {DIFFUSERS_META!r} holds a JSON {type(raw).__name__}, not an object; {fix}")
    for prefix in DENOISER_PREFIXES:
        picked = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        if picked:
            return picked
    return raw


def check_finite(tensors: dict[str, torch.Tensor], f: Path) -> None:
    """Refuse NaN/inf anywhere in the file, naming every such tensor (a diverged run, a bad export)."""
    bad = []
    for key, t in tensors.items():
        if not t.is_floating_point():
            continue
        try:
            finite = torch.isfinite(t)
        except (RuntimeError, NotImplementedError):  # dtypes without isfinite (float8 on some builds)
            finite = torch.isfinite(t.float())
        if not bool(finite.all()):
            values = t.float()
            nan = int(torch.isnan(values).sum())
            bad.append(f"`{key}`: {nan} NaN and {int((~finite).sum()) - nan} inf of {t.numel()} values")
    if bad:
        lines = "\n".join(f"  {b}" for b in bad)
        raise AdapterError(f"{f}: {len(bad)} tensor(s) hold non-finite values (NaN/inf), so the adapter would "
                           "poison every output; nothing was loaded: re-export it from a checkpoint saved "
                           f"before training diverged (or fix the export)\n{lines}")


def read_adapter(path: str | Path) -> RawAdapter:
    """Read the adapter tensors and its LoRA config from a file or folder.

    Refuses (AdapterError naming the file) unreadable files, invalid JSON, non-finite tensors and
    a lorabench checkpoint whose files no longer match its manifest.
    """
    f = _pick_file(Path(path))
    tensors, meta = _read_tensors(f)
    check_finite(tensors, f)
    config, source = None, None
    cfg_file = f.parent / PEFT_CONFIG
    if f.name in PEFT_DIR_FILES and cfg_file.is_file():
        config = read_json_object(cfg_file, "fix the file, or re-save the adapter (PeftModel.save_pretrained "
                                            "writes it)")
        source = str(cfg_file)
    elif (cfg := _diffusers_config(meta, f)) is not None:
        config, source = cfg, f"{f.name} metadata {DIFFUSERS_META!r}"
    digest = sha256_file(f)
    mpath, manifest = f.parent / MANIFEST, None
    if mpath.is_file():  # a lorabench checkpoint: the files must be the ones that were saved
        manifest = read_json_object(mpath, "the checkpoint is damaged: use another checkpoint or load the "
                                           "adapter file itself")
        recorded = manifest.get("files", {}) if isinstance(manifest.get("files"), dict) else {}
        checked = [(f, digest)] + ([(cfg_file, None)] if source == str(cfg_file) else [])
        for file, have in checked:
            want = recorded.get(file.name)
            if want and want != (have or sha256_file(file)):
                raise AdapterError(f"{file} does not match the sha256 recorded in {mpath}: the file changed "
                                   "after the checkpoint was written or is corrupt")
    return RawAdapter(f, digest, tensors, config, source, manifest)


# ------------------------------------------------------------------ key parsing


_LORA = re.compile(r"^(?P<mod>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<ad>[^.]+))?\.weight$")
_ALPHA = re.compile(r"^(?P<mod>.+)\.alpha$")
_UNSUPPORTED = re.compile(r"^(?P<mod>.+?)\.(?P<what>lora_magnitude_vector|dora_scale|diff_b|diff|"
                          r"lora_B(?:\.[^.]+)?\.bias|hada_\w+|lokr_\w+)(?:\..*)?$")
_FULL = re.compile(r"^(?P<mod>.+?)(?:\.modules_to_save\.(?P<ad>[^.]+))?\.(?P<param>weight|bias)$")
_KINDS = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B"}


@dataclass
class ParsedKey:
    key: str
    dialect: str
    name: str                  # module name as written in the file (prefix removed)
    kind: str                  # A | B | alpha | full | skip
    param: str = "weight"
    adapter: Optional[str] = None
    reason: Optional[str] = None


def parse_key(key: str) -> ParsedKey:
    """Dialect, module name and tensor kind of one key (names not yet resolved)."""
    if key.startswith("lora_te"):
        return ParsedKey(key, "kohya", key.split(".")[0], "skip",
                         reason="text-encoder LoRA: only the transformer/UNet is patched")
    for dialect, prefixes in (("kohya", KOHYA_PREFIXES), ("peft", (PEFT_PREFIX,)),
                              ("comfyui", (COMFYUI_PREFIX,)), ("diffusers", DENOISER_PREFIXES)):
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix:
            rest = key[len(prefix):]
            break
    else:
        if key.split(".")[0].startswith("text_encoder"):
            return ParsedKey(key, "diffusers", key, "skip",
                             reason="text-encoder LoRA: only the transformer/UNet is patched")
        dialect, rest = "diffsynth", key
    if m := _LORA.match(rest):
        return ParsedKey(key, dialect, m["mod"], _KINDS[m["kind"]], adapter=m["ad"])
    if m := _ALPHA.match(rest):
        return ParsedKey(key, dialect, m["mod"], "alpha")
    if m := _UNSUPPORTED.match(rest):
        return ParsedKey(key, dialect, m["mod"], "skip",
                         reason=f"`{m['what']}` tensors (DoRA, LoHa/LoKr, bias or weight diffs) are not supported")
    if dialect != "kohya" and (m := _FULL.match(rest)):
        return ParsedKey(key, dialect, m["mod"], "full", param=m["param"], adapter=m["ad"])
    return ParsedKey(key, dialect, rest, "skip", reason="not a LoRA tensor name this loader understands")


# ------------------------------------------------------------------ normalisation


@dataclass
class ModuleLora:
    """All tensors of one adapted module, named in the target model's naming when resolved."""

    name: str
    file_name: str                            # as written in the file, prefix removed
    A: Optional[torch.Tensor] = None
    B: Optional[torch.Tensor] = None
    alpha: Optional[float] = None
    alpha_source: Optional[str] = None
    full: dict[str, torch.Tensor] = field(default_factory=dict)  # modules_to_save: param -> tensor
    keys: list[str] = field(default_factory=list)
    problem: Optional[str] = None             # set when the tensors cannot be used as they are

    @property
    def is_lora(self) -> bool:
        return self.A is not None or self.B is not None

    @property
    def rank(self) -> Optional[int]:
        if self.A is not None:
            return int(self.A.shape[0])
        return int(self.B.shape[1]) if self.B is not None else None


@dataclass
class Adapter:
    """A normalised adapter: one :class:`ModuleLora` per module, plus what could not be parsed."""

    source: Path
    sha256: str
    dialect: str
    modules: dict[str, ModuleLora]
    issues: list[KeyIssue]                    # keys skipped (text encoder, DoRA, unknown names)
    config: Optional[dict[str, Any]]
    config_source: Optional[str]
    manifest: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    renamed_from: Optional[str] = None        # family whose original names were mapped
    # One line per disagreement between the LoRA config and the tensors (field, file, modules).
    inconsistencies: list[str] = field(default_factory=list)
    # target_modules entries that name none of the file's modules (judged against a model later:
    # an entry that names no module of the model either is ignored by peft too).
    uncovered_targets: list[str] = field(default_factory=list)

    @property
    def use_rslora(self) -> bool:
        return bool((self.config or {}).get("use_rslora"))

    def lora(self) -> dict[str, ModuleLora]:
        return {n: m for n, m in self.modules.items() if m.is_lora}

    def alpha_sources(self) -> str:
        return ", ".join(f"{s} ({n})" for s, n in Counter(m.alpha_source for m in self.lora().values()).items())


def _pattern_key(patterns: dict[str, Any], name: str, field_name: str, source: Optional[str]) -> Optional[str]:
    # peft's rule (peft.utils.other.get_pattern_key): the first pattern matching a suffix at a dot boundary.
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", name):
                return key
        except re.error as e:
            raise AdapterError(f"{source}: `{field_name}` key {key!r} is not a valid regular expression ({e}); "
                               "fix the LoRA config") from None
    return None


def config_value(cfg: dict[str, Any], pattern_field: str, field_name: str, name: str,
                 source: Optional[str] = None) -> tuple[str, Any]:
    """(field, value) peft uses for module ``name``: its ``rank_pattern``/``alpha_pattern`` entry, else the default."""
    patterns = cfg.get(pattern_field) or {}
    key = _pattern_key(patterns, name, pattern_field, source) if isinstance(patterns, dict) else None
    if key is not None:
        return f"{pattern_field}[{key!r}]", patterns[key]
    return field_name, cfg.get(field_name)


def checkable_targets(cfg: Optional[dict[str, Any]]) -> bool:
    """Whether ``cfg`` names its targets in a form that can be matched without peft's model walk."""
    t = (cfg or {}).get("target_modules")
    return bool(t) and t != "all-linear" and isinstance(t, (str, list, tuple, set))


def target_entries(cfg: dict[str, Any], name: str, source: Optional[str] = None) -> list[str]:
    """The ``target_modules`` entries of ``cfg`` that make peft adapt module ``name``.

    peft's own matcher (``check_target_module_exists``), so ``exclude_modules``,
    ``layers_to_transform``/``layers_pattern`` and a regex string count exactly as in peft.
    """
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = cfg.get("target_modules")
    entries = [targets] if isinstance(targets, str) else sorted(targets or ())
    rest = {k: cfg.get(k) for k in ("exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern")}
    try:
        return [e for e in entries if check_target_module_exists(
            SimpleNamespace(target_modules=e if isinstance(targets, str) else [e], target_parameters=None, **rest),
            name)]
    except (re.error, TypeError) as e:
        raise AdapterError(f"{source or 'the LoRA config'}: `target_modules`/`exclude_modules`/`layers_to_transform` "
                           f"cannot be matched as peft would ({type(e).__name__}: {e}); fix the LoRA config") from None


class _Resolver:
    """Maps a parsed key's module name to the target model's naming (or leaves it as written)."""

    def __init__(self, model: Optional[ModelInfo]):
        self.model = model
        self.flat: dict[str, set[str]] = {}
        if model is not None:
            for n in model.layers:
                self.flat.setdefault(n.replace(".", "_"), set()).add(n)
                orig = model.names.to_original(n) if model.names else None
                if orig:
                    self.flat.setdefault(orig.replace(".", "_"), set()).add(n)

    def known(self, name: str, p: ParsedKey) -> bool:
        m = self.model
        return m is not None and (f"{name}.{p.param}" in m.params if p.kind == "full"
                                  else name in m.layers or name in m.others)

    def resolve(self, p: ParsedKey) -> tuple[str, Optional[str], bool]:
        """(name, problem, renamed)."""
        if self.model is None or self.known(p.name, p):
            return p.name, None, False
        if p.dialect == "kohya":
            hits = self.flat.get(p.name, set())
            if len(hits) > 1:
                return p.name, f"kohya name fits several modules ({', '.join(sorted(hits))})", False
            return (next(iter(hits)), None, False) if hits else (p.name, None, False)
        table = self.model.names
        new = table.to_model(p.name) if table else None
        if new and self.known(new, p):
            return new, None, True
        return p.name, None, False


def normalise(raw: RawAdapter, model: Optional[ModelInfo] = None) -> Adapter:
    """Group ``raw``'s tensors per module, resolve names against ``model``, and attach alphas."""
    parsed = [parse_key(k) for k in raw.tensors]
    names = sorted({p.adapter for p in parsed if p.adapter})
    if len(names) > 1:
        raise AdapterError(f"{raw.path} holds several named adapters ({', '.join(names)}); "
                           "save one adapter per file")
    used = Counter(p.dialect for p in parsed if p.kind != "skip")
    dialect = "+".join(sorted(used)) if used else "unknown"
    resolver = _Resolver(model)
    modules: dict[str, ModuleLora] = {}
    issues: list[KeyIssue] = []
    renamed = False
    for p in parsed:
        if p.kind == "skip":
            issues.append(KeyIssue(p.key, p.reason or "skipped"))
            continue
        name, problem, was_renamed = resolver.resolve(p)
        renamed |= was_renamed
        mod = modules.setdefault(name, ModuleLora(name, p.name))
        mod.problem = mod.problem or problem
        if mod.file_name != p.name:
            mod.problem = f"keys `{mod.file_name}` and `{p.name}` both map to this module"
        mod.keys.append(p.key)
        t = raw.tensors[p.key]
        if p.kind == "alpha":
            if t.numel() != 1:
                mod.problem = f"`{p.key}` should be a scalar, has shape {tuple(t.shape)}"
            else:
                mod.alpha, mod.alpha_source = float(t.item()), "alpha tensor"
        elif p.kind == "full":
            mod.full[p.param] = t
        elif getattr(mod, p.kind) is not None:
            mod.problem = f"two `lora_{p.kind}` tensors for one module (key {p.key})"
        else:
            setattr(mod, p.kind, t)
    adapter = Adapter(raw.path, raw.sha256, dialect, modules, issues, raw.config, raw.config_source, raw.manifest,
                      renamed_from=model.family if renamed and model else None)
    _attach_alphas(adapter)
    if "kohya" in dialect and model is None:
        adapter.notes.append("kohya names are shown as written: they are resolved only against a model")
    return adapter


def _number(field_name: str, value: Any, source: Optional[str], rank: bool) -> float:
    """A config number as peft would use it: a rank is a positive integer, an alpha a finite number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and rank:
        ok = float(value).is_integer() and value > 0
    if not ok:
        raise AdapterError(f"{source}: `{field_name}` is {value!r}, not a "
                           f"{'positive integer' if rank else 'finite number'}; fix the LoRA config or re-export "
                           "the adapter")
    return value


def _attach_alphas(adapter: Adapter) -> None:
    """Alpha per module (``.alpha`` tensor, else config, else rank), and config-vs-tensor disagreements."""
    cfg = adapter.config or {}
    src = adapter.config_source
    defaulted = []
    rank_off: dict[tuple[str, Any, int], list[str]] = defaultdict(list)
    alpha_off: dict[tuple[str, Any, float], list[str]] = defaultdict(list)
    for mod in adapter.lora().values():
        usable = mod.A is not None and mod.B is not None and not mod.problem
        if usable and cfg:
            field_name, want = config_value(cfg, "rank_pattern", "r", mod.file_name, src)
            if want is not None and _number(field_name, want, src, rank=True) != mod.rank:
                rank_off[(field_name, want, mod.rank)].append(mod.file_name)
        field_name, value = config_value(cfg, "alpha_pattern", "lora_alpha", mod.file_name, src)
        if value is not None:
            value = float(_number(field_name, value, src, rank=False))
        if mod.alpha is not None:  # an .alpha tensor: checkable against the config
            if value is not None and usable and value != mod.alpha:
                alpha_off[(field_name, value, mod.alpha)].append(mod.file_name)
            continue
        if value is not None:
            mod.alpha, mod.alpha_source = value, src
        elif mod.rank is not None:
            mod.alpha, mod.alpha_source = float(mod.rank), "default alpha = rank"
            defaulted.append(mod.name)
    if defaulted:
        adapter.notes.append(f"{len(defaulted)} of {len(adapter.lora())} modules store no alpha (no .alpha "
                             "tensor, no config): alpha = rank assumed (scale 1), the diffusers/PEFT convention")

    def first(names: list[str]) -> str:
        return f"{len(names)} module(s) (first: `{sorted(names, key=natural_key)[0]}`)"

    for (field_name, want, have), names in sorted(rank_off.items(), key=str):
        adapter.inconsistencies.append(
            f"{src}: `{field_name}` = {want} but the tensors of {first(names)} have rank {have}")
    for (field_name, want, have), names in sorted(alpha_off.items(), key=str):
        adapter.inconsistencies.append(
            f"{src}: `{field_name}` = {want:g} but the `.alpha` tensors in {adapter.source.name} give {have:g} for "
            f"{first(names)}")
    _check_targets(adapter)


def _check_targets(adapter: Adapter) -> None:
    """Tensors for modules the config does not target, and target entries no tensor answers."""
    cfg = adapter.config
    if not checkable_targets(cfg) or "kohya" in adapter.dialect:  # kohya names are only known against a model
        return
    selected = {m.file_name: target_entries(cfg, m.file_name, adapter.config_source) for m in adapter.lora().values()}
    untargeted = sorted((n for n, entries in selected.items() if not entries), key=natural_key)
    if untargeted:
        fields = [f"`{k}`" for k in ("target_modules", "exclude_modules", "layers_to_transform")
                  if cfg.get(k) not in (None, [], "")]
        adapter.inconsistencies.append(
            f"{adapter.config_source}: {'/'.join(fields)} {'does' if len(fields) == 1 else 'do'} not select "
            f"{len(untargeted)} module(s) that have tensors in {adapter.source.name} (first: `{untargeted[0]}`)")
    targets = cfg["target_modules"]
    hit = {e for entries in selected.values() for e in entries}
    adapter.uncovered_targets = [e for e in ([targets] if isinstance(targets, str) else sorted(targets))
                                 if e not in hit]


def open_adapter(path: str | Path, model: Optional[ModelInfo] = None) -> Adapter:
    """Read and normalise the adapter at ``path`` (names resolved against ``model`` if given)."""
    return normalise(read_adapter(path), model)
