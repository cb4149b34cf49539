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
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import sha256_file
from ..layout import MANIFEST
from .names import ModelInfo
from .report import AdapterError, KeyIssue

PEFT_DIR_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
DIFFUSERS_META = "lora_adapter_metadata"
DENOISER_PREFIXES = ("transformer.", "unet.")
KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")


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
    for name in (*PEFT_DIR_FILES, DIFFUSERS_FILE):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise AdapterError(f"{path}: no adapter file found (looked for {', '.join(PEFT_DIR_FILES)}, "
                       f"{DIFFUSERS_FILE}, or a single *.safetensors; found {[p.name for p in found]})")


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


def _diffusers_config(meta: dict[str, str], f: Path) -> Optional[dict[str, Any]]:
    if DIFFUSERS_META not in meta:
        return None
    try:
        raw = json.loads(meta[DIFFUSERS_META])
    except json.JSONDecodeError as e:
        raise AdapterError(f"{f}: metadata {DIFFUSERS_META!r} is not valid JSON ({e})") from e
    for prefix in DENOISER_PREFIXES:
        picked = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        if picked:
            return picked
    return raw


def read_adapter(path: str | Path) -> RawAdapter:
    """Read the adapter tensors and its LoRA config from a file or folder."""
    f = _pick_file(Path(path))
    tensors, meta = _read_tensors(f)
    config, source = None, None
    if f.name in PEFT_DIR_FILES and (f.parent / PEFT_CONFIG).is_file():
        config, source = json.loads((f.parent / PEFT_CONFIG).read_text()), str(f.parent / PEFT_CONFIG)
    elif (cfg := _diffusers_config(meta, f)) is not None:
        config, source = cfg, f"{f.name} metadata"
    digest = sha256_file(f)
    mpath, manifest = f.parent / MANIFEST, None
    if mpath.is_file():  # a lorabench checkpoint: the file must be the one that was saved
        manifest = json.loads(mpath.read_text())
        recorded = manifest.get("files", {}).get(f.name)
        if recorded and recorded != digest:
            raise AdapterError(f"{f} does not match the sha256 recorded in {mpath}: the file changed "
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
    for dialect, prefixes in (("kohya", KOHYA_PREFIXES), ("peft", ("base_model.model.",)),
                              ("comfyui", ("diffusion_model.",)), ("diffusers", DENOISER_PREFIXES)):
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

    @property
    def use_rslora(self) -> bool:
        return bool((self.config or {}).get("use_rslora"))

    @property
    def targets(self) -> Optional[list[str] | str]:
        t = (self.config or {}).get("target_modules")
        return sorted(t) if isinstance(t, (list, tuple, set)) else t

    def lora(self) -> dict[str, ModuleLora]:
        return {n: m for n, m in self.modules.items() if m.is_lora}

    def full(self) -> dict[str, ModuleLora]:
        return {n: m for n, m in self.modules.items() if m.full}

    def alpha_sources(self) -> str:
        return ", ".join(f"{s} ({n})" for s, n in Counter(m.alpha_source for m in self.lora().values()).items())


def _pattern_value(patterns: dict[str, Any], name: str) -> Any:
    # peft's rule (peft.utils.other.get_pattern_key): a pattern matches a suffix at a dot boundary.
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return None


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


def _attach_alphas(adapter: Adapter) -> None:
    cfg = adapter.config or {}
    defaulted = []
    for mod in adapter.lora().values():
        if mod.rank is not None and cfg:
            want = _pattern_value(cfg.get("rank_pattern") or {}, mod.file_name) or cfg.get("r")
            if want is not None and int(want) != mod.rank:
                adapter.notes.append(f"{adapter.config_source} gives r={want} for `{mod.file_name}` but its "
                                     f"tensors have rank {mod.rank}: the tensors are used")
        if mod.alpha is not None:
            continue
        value = _pattern_value(cfg.get("alpha_pattern") or {}, mod.file_name)
        if value is None:
            value = cfg.get("lora_alpha")
        if value is not None:
            mod.alpha, mod.alpha_source = float(value), adapter.config_source
        elif mod.rank is not None:
            mod.alpha, mod.alpha_source = float(mod.rank), "default alpha = rank"
            defaulted.append(mod.name)
    if defaulted:
        adapter.notes.append(f"{len(defaulted)} of {len(adapter.lora())} modules store no alpha (no .alpha "
                             "tensor, no config): alpha = rank assumed (scale 1), the diffusers/PEFT convention")


def open_adapter(path: str | Path, model: Optional[ModelInfo] = None) -> Adapter:
    """Read and normalise the adapter at ``path`` (names resolved against ``model`` if given)."""
    return normalise(read_adapter(path), model)
