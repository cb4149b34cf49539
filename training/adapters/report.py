"""What an adapter holds and how it fits a model, as an explained table (never a bare count).

Field note 2: "311 missing keys" that were fine, and field note 1: a LoRA that silently did
nothing. The report lists every module with its rank, alpha and delta norm, and every key that
did not fit with the reason why, so success and failure read differently at a glance.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from ..checkpoint import config_hash
from .errors import AdapterError, KeyIssue
from .formats import Adapter, ModuleLora, checkable_targets, target_entries
from .names import ModelInfo, block_count, block_index, natural_key


@dataclass
class CoverageGap:
    """One module type the adapter adapts in some blocks of a repeated container but not in others."""

    container: str          # e.g. ``blocks`` (Wan) or ``transformer_blocks`` (SD3)
    module_type: str        # the module's name inside a block, e.g. ``attn1.to_q``
    adapted: list[int]      # block indices that have tensors for it
    missing: list[int]      # block indices of the model that have the module but no tensors for it


def index_ranges(idx: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    runs: list[list[int]] = []
    for i in sorted(idx):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass
class AdapterReport:
    """Everything known about one adapter and its fit to one model."""

    source: str
    sha256: str
    dialect: str
    scale: float = 1.0
    adapter_name: str = "lorabench"
    model: Optional[str] = None                 # target model class, None when inspected alone
    ranks: dict[str, int] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)
    alpha_source: str = ""
    use_rslora: bool = False
    matched: list[str] = field(default_factory=list)
    missing: list[KeyIssue] = field(default_factory=list)
    unexpected: list[KeyIssue] = field(default_factory=list)
    full_tensors: list[str] = field(default_factory=list)   # modules_to_save: replaced whole
    delta_norms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    adapter_blocks: Optional[int] = None
    model_blocks: Optional[int] = None
    loaded: bool = False                        # injected into the model (not just inspected)
    effect_max_diff: Optional[float] = None     # set by verify_effect
    coverage: list[CoverageGap] = field(default_factory=list)  # partial: module types missing in some blocks
    inconsistent: list[str] = field(default_factory=list)      # LoRA config vs tensors, one line per problem

    @property
    def partial(self) -> bool:
        """Something does not fit: missing or unexpected modules, or module types adapted in only some blocks."""
        return bool(self.missing or self.unexpected or self.coverage)

    @property
    def ok(self) -> bool:
        """Every adapter tensor fits the model, nothing it targets is missing, every block is covered alike,
        and its LoRA config agrees with its tensors."""
        return bool(self.matched or self.full_tensors) and not self.partial and not self.inconsistent

    def refusal(self, allow_partial: bool = False, allow_inconsistent: bool = False,
                with_table: bool = True) -> Optional[str]:
        """Why loading this adapter is refused (first line: the file and what to do), or None.

        Nothing matching is always refused; a partial fit only without ``allow_partial``, a config
        that disagrees with the tensors only without ``allow_inconsistent``. ``with_table=False``
        leaves out the module table (for a caller that printed it already).
        """
        table = f"\n{self.to_table(max_matched=20)}" if with_table else ""
        if not (self.matched or self.full_tensors):
            what = f"a module of {self.model}" if self.model else "any module name this loader understands"
            return (f"{self.source}: no LoRA tensor of this {self.dialect} adapter matches {what}; "
                    f"nothing was loaded.{table}")
        parts = []
        if self.inconsistent and not allow_inconsistent:
            parts.append(f"{self.source}: its LoRA config disagrees with its tensors ({len(self.inconsistent)} "
                         "problem(s) below); nothing was loaded. Fix the config or re-export the adapter; to load "
                         "the tensors as they are (scale = alpha / the tensors' own rank), pass "
                         "allow_inconsistent=True (CLI: --allow-inconsistent).\n"
                         + "\n".join(f"  {line}" for line in self.inconsistent))
        if self.partial and not allow_partial:
            counts = f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
            if self.coverage:
                counts += f", {len(self.coverage)} module types adapted in only some blocks"
            msg = (f"{self.source} does not fully match {self.model}: {counts} (see the reasons below). Nothing "
                   f"was loaded; if that is intended, pass allow_partial=True (CLI: --allow-partial) to load the "
                   f"{len(self.matched)} matching modules anyway.")
            if self.coverage and not with_table:  # the full table ends with it otherwise
                msg += "\n" + self.coverage_table()
            parts.append(msg + table)
        return "\n".join(parts) or None

    def check(self, allow_partial: bool = False, allow_inconsistent: bool = False) -> None:
        """Raise :class:`AdapterError` with :meth:`refusal`'s message unless the adapter is acceptable."""
        why = self.refusal(allow_partial, allow_inconsistent)
        if why:
            raise AdapterError(why, self)

    def coverage_table(self) -> str:
        """The partial-coverage gaps: which module types are adapted in which blocks, and where they are missing."""
        if not self.coverage:
            return ""
        rows = [("module type", "adapted in blocks", "missing in blocks")]
        rows += [(f"{g.container}.N.{g.module_type}", index_ranges(g.adapted), index_ranges(g.missing))
                 for g in self.coverage]
        widths = [max(len(r[c]) for r in rows) for c in range(2)]
        lines = [f"partial coverage: {len(self.coverage)} module types are adapted in some blocks but not in "
                 f"others{self._blocks()}; a complete adapter adapts each module type in every block that has it:"]
        lines += ["  " + "  ".join(r[c].ljust(widths[c]) for c in range(2)) + "  " + r[2] for r in rows]
        return "\n".join(line.rstrip() for line in lines)

    def _blocks(self) -> str:
        if not (self.adapter_blocks or self.model_blocks):
            return ""
        return f" (blocks: adapter {self.adapter_blocks or '-'}, model {self.model_blocks or '-'})"

    def scaling(self, module: str) -> float:
        """Effective multiplier of B@A for ``module``: scale * alpha / r (alpha / sqrt(r) with rsLoRA)."""
        r = self.ranks[module]
        return self.scale * self.alphas[module] / (math.sqrt(r) if self.use_rslora else r)

    def summary(self) -> str:
        return (f"{self.source} (sha256 {self.sha256[:12]}, {self.dialect}): {len(self.matched)} modules "
                f"matched, rank {value_counts(self.ranks)}, alpha {value_counts(self.alphas)}, scale {self.scale:g}; "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
                + (f", {len(self.coverage)} module types in only some blocks" if self.coverage else "")
                + (f", {len(self.inconsistent)} config/tensor disagreements" if self.inconsistent else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self, max_matched: Optional[int] = None) -> str:
        """Aligned text: a header, then problems first, then matched modules (up to ``max_matched``)."""
        head = [("adapter", self.source), ("sha256", self.sha256), ("dialect", self.dialect),
                ("model", (self.model or "none (inspected alone)") + self._blocks()),
                ("rank", value_counts(self.ranks) or "-"),
                ("alpha", f"{value_counts(self.alphas) or '-'}  from {self.alpha_source or '-'}"
                          + ("  (rsLoRA: alpha/sqrt(r))" if self.use_rslora else "")),
                ("scale", f"{self.scale:g}"),
                ("result", f"{len(self.matched)} matched, {len(self.missing)} missing, "
                           f"{len(self.unexpected)} unexpected, {len(self.full_tensors)} full tensors"
                           + (f", {len(self.coverage)} module types in only some blocks (partial)"
                              if self.coverage else "")
                           + ("  [loaded]" if self.loaded else ""))]
        head += [("inconsistent", n) for n in self.inconsistent]
        head += [("note", n) for n in self.notes]
        if self.effect_max_diff is not None:
            head.append(("effect", f"max |output with - without adapter| = {self.effect_max_diff:.3e}"))
        width = max(len(k) for k, _ in head)
        lines = [f"{k:<{width}}  {v}" for k, v in head]
        rows = [(i.name, kind, "-" if i.rank is None else str(i.rank), "-" if i.alpha is None else f"{i.alpha:g}",
                 "-", i.reason) for kind, issues in (("missing", self.missing), ("unexpected", self.unexpected))
                for i in issues]
        rows += [(n, "full", "-", "-", "-", "modules_to_save tensor: replaces the module's weights")
                 for n in self.full_tensors]
        shown = self.matched if max_matched is None else self.matched[:max_matched]
        status = "matched" if self.model else "found"  # nothing to match against when inspected alone
        rows += [(n, status, str(self.ranks[n]), f"{self.alphas[n]:g}",
                  f"{self.delta_norms[n]:.3e}" if n in self.delta_norms else "-", "") for n in shown]
        table = [("module", "status", "rank", "alpha", "|delta|_F", "reason")] + rows
        widths = [max(len(r[c]) for r in table) for c in range(5)]
        lines.append("")
        lines += ["  ".join(r[c].ljust(widths[c]) for c in range(5)) + ("  " + r[5] if r[5] else "")
                  for r in table]
        if len(shown) < len(self.matched):
            lines.append(f"... and {len(self.matched) - len(shown)} more matched modules")
        if self.coverage:
            lines += ["", self.coverage_table()]
        return "\n".join(line.rstrip() for line in lines)


def value_counts(values: dict[str, Any]) -> str:
    """'8' when uniform, else '8 (x22), 4 (x2)'."""
    c = Counter(values.values())
    if len(c) <= 1:
        return ", ".join(f"{v:g}" for v in c)
    return ", ".join(f"{v:g} (x{n})" for v, n in c.most_common())


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape)


def delta_norm(A: torch.Tensor, B: torch.Tensor, scaling: float) -> float:
    """||scaling * B @ A||_F without forming B @ A: ||BA||^2 = sum((B^T B) * (A A^T))."""
    a = A.reshape(A.shape[0], -1).double()
    b = B.reshape(B.shape[0], -1).double()
    sq = float(((b.T @ b) * (a @ a.T)).sum())
    return abs(scaling) * math.sqrt(max(sq, 0.0))


def _absent(name: str, model: ModelInfo, adapter_blocks: Optional[int]) -> str:
    idx = block_index(name)
    if idx is not None and model.blocks is not None and idx >= model.blocks:
        return (f"module `{name}` does not exist: the adapter has {adapter_blocks} blocks, "
                f"the model {model.blocks}")
    close = difflib.get_close_matches(name, list(model.layers), n=1, cutoff=0.6)
    hint = f" (closest: `{close[0]}`)" if close else ""
    return f"module `{name}` does not exist in {model.class_name}{hint}"


def _problem(mod: ModuleLora, model: Optional[ModelInfo], adapter_blocks: Optional[int]) -> Optional[str]:
    if mod.problem:
        return mod.problem
    A, B = mod.A, mod.B
    if mod.is_lora:
        if A is None or B is None:
            return f"has lora_{'B' if A is None else 'A'} but no lora_{'A' if A is None else 'B'} ({mod.keys[0]})"
        if A.ndim < 2 or B.ndim < 2 or A.shape[0] != B.shape[1]:
            return f"rank mismatch: A is {_shape(A)} but B is {_shape(B)}"
    if model is None:
        return None
    if mod.is_lora:
        layer = model.layers.get(mod.name)
        if layer is None:
            if mod.name in model.others:
                return f"module `{mod.name}` is a {model.others[mod.name]}: LoRA applies to Linear/Conv layers"
            return _absent(mod.name, model, adapter_blocks)
        if A.shape[1] != layer.in_features or B.shape[0] != layer.out_features:
            return f"shape mismatch with model {layer.describe()}: A is {_shape(A)}, B is {_shape(B)}"
    for param, t in mod.full.items():
        want = model.params.get(f"{mod.name}.{param}")
        if want is None:
            return _absent(mod.name, model, adapter_blocks) if not mod.is_lora else \
                f"parameter `{mod.name}.{param}` does not exist in {model.class_name}"
        if tuple(t.shape) != want:
            return f"full tensor `{param}` is {_shape(t)} but the model's is {'x'.join(map(str, want))}"
    return None


def _config_naming(adapter: Adapter, model: ModelInfo):
    """Module name as the adapter's config writes it (original family names when they were mapped)."""
    table = model.names if adapter.renamed_from else None
    return lambda name: (table.to_original(name) if table else None) or name


def _missing(adapter: Adapter, model: ModelInfo, adapter_blocks: Optional[int],
             uncovered: set[str]) -> list[KeyIssue]:
    """Modules the config targets that have no tensors (entries no tensor answers at all are reported as
    config/tensor disagreements instead, once)."""
    cfg = adapter.config
    if not checkable_targets(cfg):  # all-linear depends on peft's output-layer rule
        return []
    naming = _config_naming(adapter, model)
    out = []
    for name in sorted(model.layers, key=natural_key):
        if name in adapter.modules and adapter.modules[name].is_lora:
            continue
        entries = [e for e in target_entries(cfg, naming(name), adapter.config_source) if e not in uncovered]
        if not entries:
            continue
        idx = block_index(name)
        why = (f": the adapter has {adapter_blocks} blocks, the model {model.blocks}"
               if idx is not None and adapter_blocks is not None and idx >= adapter_blocks else "")
        out.append(KeyIssue(name, f"targeted by `{entries[0]}` in {adapter.config_source}, but the file has no "
                                  f"weights for it{why}"))
    return out


_IN_BLOCK = re.compile(r"^(?P<container>.+?)\.(?P<idx>\d+)\.(?P<rest>.+)$")


def _coverage(adapter: Adapter, model: ModelInfo, already: set[str]) -> list[CoverageGap]:
    """Module types the adapter adapts in some blocks of a repeated container but not in every block of
    the model that has them (modules already reported as missing are not counted twice)."""
    present = {n for n, m in adapter.modules.items() if m.is_lora and n in model.layers}
    types: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for name in model.layers:
        if m := _IN_BLOCK.match(name):
            types[(m["container"], m["rest"])][int(m["idx"])] = name
    gaps = []
    for (container, rest), by_idx in types.items():
        adapted = sorted(i for i, n in by_idx.items() if n in present)
        lacking = sorted(i for i, n in by_idx.items() if n not in present and n not in already)
        if adapted and lacking:
            gaps.append(CoverageGap(container, rest, adapted, lacking))
    return sorted(gaps, key=lambda g: (natural_key(g.container), natural_key(g.module_type)))


def _uncovered_targets(adapter: Adapter, model: Optional[ModelInfo], rep: AdapterReport) -> set[str]:
    """Sort the config's target entries that no tensor answers: a disagreement when they name modules of
    the model, a note when they name none (peft ignores those too) or when there is no model to ask."""
    out = set()
    naming = _config_naming(adapter, model) if model is not None else None
    for entry in adapter.uncovered_targets:
        where = f"{adapter.config_source}: `target_modules` entry `{entry}`"
        if model is None:
            rep.notes.append(f"{where} selects none of the modules in {adapter.source.name} (checked against a "
                             "model when one is given)")
            continue
        named = [n for n in model.layers
                 if entry in target_entries(adapter.config or {}, naming(n), adapter.config_source)]
        if not named:
            rep.notes.append(f"{where} names no module of {model.class_name} nor of the file; ignored (as peft does)")
            continue
        out.add(entry)
        rep.inconsistent.append(f"{where} selects {len(named)} module(s) of {model.class_name} (first: "
                                f"`{sorted(named, key=natural_key)[0]}`) but {adapter.source.name} has no tensors "
                                "for any of them")
    return out


def build_report(adapter: Adapter, model: Optional[ModelInfo], scale: float = 1.0,
                 adapter_name: str = "lorabench") -> AdapterReport:
    """Match a normalised adapter against a model description (or describe it alone)."""
    rep = AdapterReport(source=str(adapter.source), sha256=adapter.sha256, dialect=adapter.dialect,
                        scale=scale, adapter_name=adapter_name, model=model.class_name if model else None,
                        alpha_source=adapter.alpha_sources(), use_rslora=adapter.use_rslora,
                        notes=list(adapter.notes), model_blocks=model.blocks if model else None)
    rep.unexpected = list(adapter.issues)
    rep.inconsistent = list(adapter.inconsistencies)
    rep.adapter_blocks = block_count(adapter.modules)
    if adapter.renamed_from:
        rep.notes.append(f"module names mapped from original {adapter.renamed_from} naming to diffusers naming")
    for name, mod in sorted(adapter.modules.items(), key=lambda kv: natural_key(kv[0])):
        reason = _problem(mod, model, rep.adapter_blocks)
        if reason:
            rep.unexpected.append(KeyIssue(name, reason, mod.rank, mod.alpha))
            continue
        if mod.full:
            rep.full_tensors.append(name)
        if mod.is_lora:
            rep.matched.append(name)
            rep.ranks[name], rep.alphas[name] = mod.rank, mod.alpha
            rep.delta_norms[name] = delta_norm(mod.A, mod.B, rep.scaling(name))
    uncovered = _uncovered_targets(adapter, model, rep)
    if model is not None:
        rep.missing = _missing(adapter, model, rep.adapter_blocks, uncovered)
        gaps = _coverage(adapter, model, {i.name for i in rep.missing})
        if gaps and checkable_targets(adapter.config):
            # The config selects these modules and the tensors agree (else a row above says so): a
            # layers_to_transform or per-block target list, partial by design. Said, not refused.
            rep.notes.append(f"adapts some module types in only some blocks, as {adapter.config_source} selects: "
                             + "; ".join(f"{g.container}.N.{g.module_type} in blocks {index_ranges(g.adapted)}"
                                         for g in gaps[:4]) + (" ..." if len(gaps) > 4 else ""))
        else:
            rep.coverage = gaps
        note = _base_model_note(adapter, model)
        if note:
            rep.notes.append(note)
    return rep


def _base_model_note(adapter: Adapter, model: ModelInfo) -> Optional[str]:
    """Compare the transformer config a lorabench checkpoint was trained on with this model's."""
    base = (adapter.manifest or {}).get("base_model") or {}
    want = base.get("transformer_config_sha256")
    if not want:
        return None
    if model.config_file is None:
        return (f"trained on {base.get('family')} at {base.get('path')}; this model was not loaded from a "
                "folder, so its config was not compared")
    have = config_hash(model.config_file)
    if have == want:
        return f"transformer config matches the one it was trained on (sha256 {want[:12]})"
    old = base.get("transformer_config") or {}
    new = {k: v for k, v in json.loads(model.config_file.read_text()).items() if not k.startswith("_")}
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) if old else []
    detail = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fields[:8])
    return (f"WARNING: transformer config differs from training: trained on {base.get('path')} (config sha256 "
            f"{want[:12]}), this model is {model.config_file} ({have[:12]})"
            + (f"; changed: {detail}" if detail else ""))
