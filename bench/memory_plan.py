"""Memory plans of the full-size models, without any weights.

For Wan2.2-TI2V-5B, Wan2.1-T2V-1.3B and SD3.5-medium: write a folder holding only
``model_index.json`` and each component's ``config.json`` (the released configs, from
``training.models.real_configs``), take the shipped training config of that model (LoRA rank
and targets, dtypes, batch size) at the model's native resolution, and print
``training.memory_plan`` for one GPU with and without gradient checkpointing and
``model.offload_encoders``, and for ZeRO-3 on 8 ranks. Activations are estimates; everything
else is counted exactly from the configs.

    python -m bench.memory_plan [--models wan2.2-ti2v-5b,...] [--all-tables] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from training.config import load_config  # noqa: E402
from training.memory_plan import MemoryPlan, gib, plan_training  # noqa: E402
from training.models.real_configs import FAMILY, NATIVE_RESOLUTION, REAL_CONFIGS, write_config_folder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

#: model -> its shipped training config
TRAIN_CONFIGS = {
    "wan2.2-ti2v-5b": "configs/train/wan2.2-ti2v-5b-lora.yaml",
    "wan2.1-t2v-1.3b": "configs/train/wan2.1-t2v-1.3b-lora.yaml",
    "sd3.5-medium": "configs/train/sd3.5-medium-lora.yaml",
}

#: (label, world size, overrides)
VARIANTS = [
    ("1 GPU, checkpointing, encoders on GPU", 1,
     ["model.gradient_checkpointing=true", "model.offload_encoders=false"]),
    ("1 GPU, no checkpointing, encoders on GPU", 1,
     ["model.gradient_checkpointing=false", "model.offload_encoders=false"]),
    ("1 GPU, checkpointing, encoders offloaded", 1,
     ["model.gradient_checkpointing=true", "model.offload_encoders=true"]),
    ("1 GPU, no checkpointing, encoders offloaded", 1,
     ["model.gradient_checkpointing=false", "model.offload_encoders=true"]),
    ("ZeRO-3 x 8, checkpointing, encoders on GPU", 8,
     ["model.gradient_checkpointing=true", "model.offload_encoders=false", "deepspeed.zero_stage=3"]),
    ("ZeRO-3 x 8, checkpointing, encoders offloaded", 8,
     ["model.gradient_checkpointing=true", "model.offload_encoders=true", "deepspeed.zero_stage=3"]),
]


def plans_for(name: str, folder: Path) -> list[tuple[str, MemoryPlan]]:
    width, height, frames = NATIVE_RESOLUTION[name]
    base = [f"model.family={FAMILY[name]}", f"model.path={folder}", "model.mixed_precision=bf16",
            "data.shards=unused", f"data.width={width}", f"data.height={height}", f"data.frames={frames}",
            "deepspeed.config=null", "deepspeed.zero_stage=null"]
    out = []
    for label, world, overrides in VARIANTS:
        cfg = load_config(REPO / TRAIN_CONFIGS[name], base + overrides)
        out.append((label, plan_training(cfg, world_size=world)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(REAL_CONFIGS), help="comma-separated model names")
    ap.add_argument("--all-tables", action="store_true", help="print the full table of every variant")
    ap.add_argument("--json", type=Path, help="also write every plan as JSON here")
    args = ap.parse_args()

    dump = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = write_config_folder(name, Path(tmp) / name)  # configs only, no weights
            plans = plans_for(name, folder)
            w, h, f = NATIVE_RESOLUTION[name]
            print(f"=== {name} at {w}x{h}x{f} (configs only: {TRAIN_CONFIGS[name]}, bf16 denoiser) ===")
            shown = plans if args.all_tables else [plans[0], plans[4]]
            for label, plan in shown:
                print(f"--- {label}")
                print(plan.table().replace(str(folder), name))
                print()
            print(f"{'variant':<48}{'peak/rank GiB (estimate)':>26}{'CPU RAM/rank GiB':>18}")
            for label, plan in plans:
                print(f"{label:<48}{gib(plan.accelerator_peak()):>26}{gib(plan.cpu_ram):>18}")
            print()
            dump[name] = {label: plan.to_dict() for label, plan in plans}
    if args.json:
        args.json.write_text(json.dumps(dump, indent=2))


if __name__ == "__main__":
    main()
