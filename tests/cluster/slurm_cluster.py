"""A real one-node SLURM (slurmctld + slurmd + munged) on this machine, for the slurm tier.

Started from a private config folder (``SLURM_CONF``): nothing under /etc/slurm is touched.
The Debian packages are installed by ``.ci/run``; without them (or without root) the tests
skip and say so.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged")


def unavailable() -> str | None:
    missing = [d for d in DAEMONS if not os.path.exists(d)] + [c for c in ("sbatch", "sinfo") if not shutil.which(c)]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurmctld slurmd "
                f"slurm-client munge (.ci/run does)")
    if os.geteuid() != 0:
        return "the one-node SLURM of the tests runs its daemons as root"
    return None


class OneNodeSlurm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def write_conf(self) -> None:
        for d in ("state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        mem_mb = int(int(open("/proc/meminfo").read().split()[1]) / 1024 * 0.8)
        r = self.root
        self.conf.write_text(f"""ClusterName=lorabench-test
SlurmctldHost={self.host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobRequeue=1
MinJobAge=600
SchedulerParameters=sched_interval=2
KillWait=10
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
NodeName={self.host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def start(self) -> None:
        self.write_conf()
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["/usr/sbin/mungekey", "--create"], check=True)
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        self.munge = subprocess.Popen(["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
            subprocess.run([daemon], env=self.env, check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout
            if "idle" in out:
                return
            time.sleep(1)
        raise RuntimeError(f"the one-node SLURM did not come up: sinfo says {out!r}; "
                           f"logs in {self.root / 'log'}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True)
        for name in ("slurmd", "slurmctld"):
            pid_file = self.root / "run" / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        self.munge.terminate()
        self.munge.wait(timeout=30)
        time.sleep(1)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check)

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job`` as a dict (kept MinJobAge seconds after the job ends)."""
        out = self.run("scontrol", "show", "job", str(job_id), "-o").stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait_for(self, job_id: int, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info = self.job(job_id)
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return info
            time.sleep(2)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout:g}s")
