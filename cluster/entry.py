"""The shared shape of the ``python -m cluster.*`` drivers (what ``ray job submit`` and the SLURM
script run): usage on no argument or ``-h``, logging, library noise off, user errors in one line."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Optional

from training.console import quiet_third_party
from training.errors import run_entry, split_debug_flag


def driver_main(prog: str, doc: str, usage: str, body: Callable[[list[str]], int],
                argv: Optional[list[str]] = None) -> int:
    argv, debug = split_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help"):
        print(doc + "\n" + usage)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def run() -> int:
        quiet_third_party()
        return body(argv)

    return run_entry(prog, run, debug=debug)
