"""``python -m cluster.slurm.node``: one task per node (one ``srun`` step for the allocation).

SLURM_NODEID 0 starts the Ray head, every other node a worker that joins it; each blocks until
its step is ended by the job's exit trap. Ports come from the job id (:mod:`.ports`), the
object store and temp folder are per job, and the node gives Ray exactly the CPUs and GPUs
SLURM allocated to it.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .ports import RayPorts


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def temp_dir(job_id: int) -> str:
    # Short (Ray's unix sockets live under it: paths over 107 bytes fail) and per job.
    return f"/tmp/lorabench-ray-{job_id}"


def _gcs_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.slurm.node")
    p.add_argument("--head-ip", required=True)
    p.add_argument("--cpus", type=int, required=True)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--join-timeout", type=float, default=300)
    args = p.parse_args(argv)
    job = int(os.environ["SLURM_JOB_ID"])
    node_id = int(os.environ.get("SLURM_NODEID", "0"))
    ports = RayPorts.for_job(job)
    common = [ray_bin(), "start", "--block", f"--num-cpus={args.cpus}", f"--num-gpus={args.gpus}",
              f"--temp-dir={temp_dir(job)}", *ports.start_args()]
    if node_id == 0:
        cmd = common + ["--head", f"--node-ip-address={args.head_ip}", f"--port={ports.gcs}",
                        "--include-dashboard=true", f"--dashboard-host={args.head_ip}", f"--dashboard-port={ports.dashboard}",
                        f"--ray-client-server-port={ports.client_server}"]
    else:
        deadline = time.monotonic() + args.join_timeout
        while not _gcs_reachable(args.head_ip, ports.gcs):  # the head may still be starting
            if time.monotonic() > deadline:
                print(f"[lorabench] {socket.gethostname()}: the Ray head {args.head_ip}:{ports.gcs} did not come up "
                      f"within {args.join_timeout:g}s", file=sys.stderr, flush=True)
                return 1
            time.sleep(1)
        cmd = common + [f"--address={args.head_ip}:{ports.gcs}"]
    print(f"[lorabench] {socket.gethostname()} (node {node_id}): {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
