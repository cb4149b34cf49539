"""``python -m training CONFIG [key=value ...]``: one rank of a run, for torchrun/accelerate launch.

This is the entry point for clusters without Ray (e.g. SLURM with ``srun torchrun``)::

    torchrun --nproc-per-node 8 -m training configs/train/wan2.1-t2v-1.3b-lora.yaml \\
        deepspeed.config=configs/deepspeed/zero2.json

Every rank runs the same loop (training.trainer); the launcher's RANK/WORLD_SIZE/MASTER_ADDR
decide who is who. Only rank 0 prints the summary.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from .config import ConfigError, load_config
from .engines import world_from_env
from .errors import run_entry, split_debug_flag

USAGE = "usage: python -m training CONFIG [key=value ...]   (run by torchrun / accelerate launch)"


def main(argv: Optional[list[str]] = None) -> int:
    argv, debug = split_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\n" + USAGE)
        return 0 if argv else 2
    rank = world_from_env()[0]
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    from .console import quiet_third_party

    def body() -> int:
        quiet_third_party()  # before the trainer (and DeepSpeed) is imported: it sets DS_ACCELERATOR
        from .trainer import Trainer
        cfg = load_config(argv[0], argv[1:])
        if cfg.parallel.backend != "none":
            raise ConfigError("parallel.backend=ray is started by `python -m cluster.train`, not by "
                              "`python -m training` (which is one rank under torchrun)")
        result = Trainer(cfg).run()
        from .summary import exit_code, run_summary
        if rank == 0:
            print(run_summary(result.run_dir))
        return exit_code(result.run_dir)  # 75 when stopped on request (SLURM requeues on it)

    return run_entry(f"rank {rank}", body, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
