"""``lorabench adapter inspect | verify | convert``: thin entry points, exit 2 on any doubt.

Each ``*_main(argv) -> int`` parses, runs, prints, and returns the exit status: 0, or
:data:`training.errors.EXIT_USER_ERROR` (2) when the adapter is refused; errors print the
explained table, never a traceback. Only the model folder's transformer is loaded (on the
meta device for ``inspect``, which needs names and shapes only), never the text encoders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from ..errors import EXIT_USER_ERROR
from ..models import ModelFolderError, spec_for_folder
from .convert import FORMATS, convert, written_naming
from .errors import AdapterError
from .load import DENOISER_ATTRS, inspect_adapter, load_adapter
from .verify import verify_effect


def load_denoiser(model_dir: str, meta: bool = False) -> tuple[object, torch.nn.Module]:
    """(spec, transformer) of a diffusers model folder; ``meta=True`` builds it without weights."""
    spec = spec_for_folder(model_dir)
    spec.validate_folder(model_dir)
    index = json.loads((Path(model_dir) / "model_index.json").read_text())
    comp = next((c for c in DENOISER_ATTRS if (index.get(c) or [None])[0] is not None), None)
    if comp is None:
        raise AdapterError(f"{model_dir}/model_index.json names none of {DENOISER_ATTRS}: nothing to patch")
    import diffusers
    cls = getattr(diffusers, index[comp][1])
    if meta:
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(str(Path(model_dir) / comp)))
        # from_config does not record the folder; the manifest comparison needs it.
        model.register_to_config(_name_or_path=str(Path(model_dir) / comp))
        return spec, model
    return spec, cls.from_pretrained(str(Path(model_dir) / comp), local_files_only=True)


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR


def _add_allow_flags(p: argparse.ArgumentParser, partial: bool = True) -> None:
    if partial:
        p.add_argument("--allow-partial", action="store_true",
                       help="accept a partial fit: modules missing or not in the model, or module types adapted "
                            "in only some blocks (only the matching modules are loaded)")
    p.add_argument("--allow-inconsistent", action="store_true",
                   help="accept a LoRA config that disagrees with the tensors (rank, alpha, target_modules): "
                        "the tensors are used as they are, scale = alpha / the tensors' own rank")


def inspect_main(argv: Optional[list[str]] = None) -> int:
    """Print the adapter's table; exit 2 if loading it would be refused (with --model: unless it fits completely)."""
    p = argparse.ArgumentParser(prog="lorabench adapter inspect",
                                description="Show an adapter's dialect, ranks, alphas and modules.")
    p.add_argument("path", help="adapter file, PEFT folder or lorabench checkpoint folder")
    p.add_argument("--model", help="diffusers model folder: also match the adapter against its transformer")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    _add_allow_flags(p)
    a = p.parse_args(argv)
    try:
        model = load_denoiser(a.model, meta=True)[1] if a.model else None
        rep = inspect_adapter(a.path, model)
    except (AdapterError, ModelFolderError) as e:
        return _fail(e)
    print(json.dumps(rep.to_dict(), indent=2) if a.json else rep.to_table())
    why = rep.refusal(a.allow_partial, a.allow_inconsistent, with_table=False)
    if why:
        print(f"FAIL: {why}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def verify_main(argv: Optional[list[str]] = None) -> int:
    """Load the adapter into the model and prove an effect; exit 2 if it is refused or has none."""
    p = argparse.ArgumentParser(prog="lorabench adapter verify",
                                description="Load an adapter strictly and check that it changes the output.")
    p.add_argument("path")
    p.add_argument("--model", required=True, help="diffusers model folder")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed dummy input")
    _add_allow_flags(p)
    a = p.parse_args(argv)
    try:
        spec, model = load_denoiser(a.model)
        rep = load_adapter(model, a.path, scale=a.scale, allow_partial=a.allow_partial,
                           allow_inconsistent=a.allow_inconsistent)
        verify_effect(model, spec, rep, seed=a.seed)
    except (AdapterError, ModelFolderError) as e:
        return _fail(e)
    print(rep.to_table())
    print(f"OK: the adapter changes the output (max diff {rep.effect_max_diff:.3e})")
    return 0


def convert_main(argv: Optional[list[str]] = None) -> int:
    """Write the adapter in another dialect."""
    p = argparse.ArgumentParser(prog="lorabench adapter convert", description="Convert an adapter's key dialect.")
    p.add_argument("path")
    p.add_argument("--to", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output .safetensors file, or folder (always a folder for peft)")
    p.add_argument("--model", help="diffusers model folder; required for kohya sources")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--original-names", dest="original_names", action="store_true", default=None,
                       help="write the family's original module names (e.g. Wan blocks.N.self_attn.q); the default "
                            "for comfyui and kohya, which ComfyUI, musubi-tuner and diffusers' Wan loader expect")
    names.add_argument("--diffusers-names", dest="original_names", action="store_false", default=None,
                       help="write diffusers module names (e.g. Wan blocks.N.attn1.to_q); the default for "
                            "diffusers and peft")
    _add_allow_flags(p, partial=False)
    a = p.parse_args(argv)
    try:
        model = load_denoiser(a.model, meta=True)[1] if a.model else None
        written = convert(a.path, a.to, a.out, model=model, original_names=a.original_names,
                          allow_inconsistent=a.allow_inconsistent)
    except (AdapterError, ModelFolderError) as e:
        return _fail(e)
    print(f"wrote {written}")
    naming = written_naming(written)
    if naming:
        print(f"module names: {naming}")
    return 0


COMMANDS = {"inspect": inspect_main, "verify": verify_main, "convert": convert_main}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: lorabench adapter {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
