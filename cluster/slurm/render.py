"""The SLURM request, its checks (against the run config and the cluster), and the script.

``lorabench slurm render CONFIG ...`` writes the filled script into the run folder for review;
``submit`` does the same and hands it to ``sbatch``. Everything checkable is checked before
submission, so a job never waits in the queue only to fail at start.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from training.config import ConfigError, RunConfig
from training.errors import LorabenchError
from training.fsio import atomic_write_text
from training.layout import RunLayout

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATES = {"ray": HERE / "job-ray.sbatch", "torchrun": HERE / "job-torchrun.sbatch"}
_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")


class SlurmError(LorabenchError, RuntimeError):
    """sbatch refused the job, or SLURM is not reachable from here."""


@dataclass
class SlurmRequest:
    """What the job asks SLURM for (the ``--`` options of ``lorabench slurm``)."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: Optional[int] = None  # None: workers per node x parallel.cpus_per_worker, + 1 for the driver
    time: Optional[str] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    mem: Optional[str] = None
    job_name: Optional[str] = None
    signal_margin: int = 300             # seconds before the time limit that USR1 arrives
    join_timeout: int = 300              # seconds to wait for every node to join Ray
    launcher: str = "ray"                # "ray" (python -m cluster.train) or "torchrun" (python -m training)
    sbatch: list[str] = field(default_factory=list)  # extra "#SBATCH" options, as given

    def check(self, cfg: RunConfig) -> None:
        """The request against the run config: one worker (rank) per GPU, or CPU workers that fit."""
        if self.launcher not in TEMPLATES:
            raise ConfigError(f"--launcher {self.launcher}: use one of {', '.join(TEMPLATES)}")
        if self.nodes < 1 or self.gpus_per_node < 0 or self.signal_margin < 0:
            raise ConfigError("--nodes must be >= 1, --gpus-per-node and --signal-margin >= 0")
        if self.time is not None and not _TIME.match(self.time):
            raise ConfigError(f"--time {self.time}: use SLURM's formats (MM, HH:MM:SS, D-HH:MM, ...)")
        par = cfg.parallel
        if self.launcher == "torchrun":  # ranks come from torchrun: nodes x processes per node
            if par.backend != "none" or par.num_workers != 1:
                raise ConfigError("--launcher torchrun starts the ranks itself: keep parallel.backend=none and "
                                  "parallel.num_workers=1 (the world size is --nodes x --gpus-per-node)")
            return
        if self.gpus_per_node:
            want = self.nodes * self.gpus_per_node
            if par.num_workers != want or not par.use_gpu:
                raise ConfigError(
                    f"--nodes {self.nodes} x --gpus-per-node {self.gpus_per_node} = {want} GPUs, but the run config "
                    f"has parallel.num_workers={par.num_workers}, parallel.use_gpu={str(par.use_gpu).lower()}: one "
                    f"worker per GPU: set parallel.num_workers={want} parallel.use_gpu=true (or change the request)")
        elif par.use_gpu:
            raise ConfigError("parallel.use_gpu=true needs --gpus-per-node (GPUs are only visible to a job that asks "
                              "for them)")
        elif par.num_workers % self.nodes:
            raise ConfigError(f"parallel.num_workers={par.num_workers} does not split evenly over --nodes {self.nodes}")
        need = (par.num_workers // self.nodes) * par.cpus_per_worker if not self.gpus_per_node else 1
        if self.cpus_per_node is not None and self.cpus_per_node < need:
            raise ConfigError(f"--cpus-per-node {self.cpus_per_node} is less than the workers of a node need "
                              f"({par.num_workers // self.nodes} x parallel.cpus_per_worker={par.cpus_per_worker:g})")

    def cpus(self, cfg: RunConfig) -> int:
        if self.cpus_per_node is not None:
            return self.cpus_per_node
        if self.launcher == "torchrun":
            return max(1, self.gpus_per_node) * max(1, int(cfg.parallel.cpus_per_worker + 0.999))
        per_node = cfg.parallel.num_workers // self.nodes
        return max(1, int(per_node * cfg.parallel.cpus_per_worker + 0.999)) + 1  # + the driver on the head

    def sbatch_lines(self) -> list[str]:
        lines = []
        if self.gpus_per_node:
            lines.append(f"#SBATCH --gpus-per-node={self.gpus_per_node}")
        for opt in ("time", "partition", "account", "mem"):
            value = getattr(self, opt)
            if value:
                lines.append(f"#SBATCH --{opt}={value}")
        lines += [line if line.startswith("#SBATCH") else f"#SBATCH {line}" for line in self.sbatch]
        return lines


def check_cluster(req: SlurmRequest) -> None:
    """The request against the cluster's nodes (``sinfo``): enough nodes with that many GPUs and CPUs."""
    if shutil.which("sinfo") is None:
        raise SlurmError("sinfo is not on PATH: run this on a SLURM login node (or use `lorabench slurm render`)")
    cmd = ["sinfo", "-N", "-h", "-o", "%N|%c|%G|%P"] + (["-p", req.partition] if req.partition else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    nodes: dict[str, tuple[int, int]] = {}
    for line in proc.stdout.splitlines():
        name, cpus, gres, _ = (line.split("|") + ["", "", "", ""])[:4]
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        nodes[name] = (int(cpus or 0), gpus)
    where = f"partition {req.partition}" if req.partition else "the cluster"
    fit = [n for n, (c, g) in nodes.items() if g >= req.gpus_per_node and (req.cpus_per_node or 1) <= c]
    if len(fit) < req.nodes:
        most = max((g for _, g in nodes.values()), default=0)
        raise SlurmError(f"{where} has {len(fit)} node(s) with {req.gpus_per_node} GPU(s) and enough CPUs, the job asks "
                         f"for {req.nodes} (nodes: {len(nodes)}, most GPUs on one node: {most}); lower --nodes or "
                         f"--gpus-per-node, or pick another --partition")


def render(config: Path, overrides: list[str], cfg: RunConfig, req: SlurmRequest) -> str:
    """The filled script: the driver runs ``config`` with ``overrides`` (plus resume and launcher settings)."""
    req.check(cfg)
    layout = RunLayout.for_run(Path(cfg.output_dir).resolve(), cfg.run_name)
    extra = ["train.resume=auto"]  # every start after the first continues from the latest checkpoint
    if req.launcher == "ray":
        driver = "cluster.train"
        extra += ["parallel.backend=ray"]
    else:
        driver = "training"
        extra += ["parallel.backend=none"]
    args = [str(Path(config).resolve()), *overrides, *extra]
    procs = req.gpus_per_node or 1  # torchrun: one rank per GPU (one CPU rank per node without GPUs)
    values = {
        "JOB_NAME": req.job_name or f"lorabench-{cfg.run_name}", "NODES": str(req.nodes),
        "CPUS_PER_NODE": str(req.cpus(cfg)), "GPUS_PER_NODE": str(req.gpus_per_node),
        "PROCS_PER_NODE": str(procs), "SBATCH_LINES": "\n".join(req.sbatch_lines()),
        "LOG_DIR": shlex.quote(str(layout.root / "slurm")), "RUN_DIR": shlex.quote(str(layout.root)),
        "PYTHON": shlex.quote(sys.executable), "REPO": shlex.quote(str(REPO)),
        "SIGNAL_MARGIN": str(req.signal_margin), "JOIN_TIMEOUT": str(req.join_timeout), "DRIVER": driver,
        "ARGS": " ".join(shlex.quote(a) for a in args),
    }
    text = TEMPLATES[req.launcher].read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = re.findall(r"@@[A-Z_]+@@", text)
    assert not leftover, f"unfilled template fields {leftover}"
    return text.replace("\n\n\n", "\n\n")


def script_path(cfg: RunConfig) -> Path:
    return RunLayout.for_run(Path(cfg.output_dir).resolve(), cfg.run_name).root / "slurm" / "job.sbatch"


def write_script(text: str, cfg: RunConfig) -> Path:
    path = script_path(cfg)
    atomic_write_text(path, text)
    path.chmod(0o755)
    return path


def submit(path: Path) -> int:
    """``sbatch --parsable PATH``; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: submit from a SLURM login node (the script is at "
                         f"{path}: `sbatch {path}`)")
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused {path}: {proc.stderr.strip() or proc.stdout.strip()}")
    return int(proc.stdout.strip().split(";")[0])
