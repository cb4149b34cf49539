"""``python -m cluster.slurm.wait``: wait (bounded) until every node of the allocation, with its
CPUs and GPUs, has joined the job's Ray cluster; name the ones missing when time runs out.

Ray's own SLURM example sleeps a fixed time and hopes; a node that never joins then shows up
hours later as a worker group that cannot be placed.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time


def _addresses(host: str) -> set[str]:
    names = {host, host.split(".")[0]}
    try:
        names.update(info[4][0] for info in socket.getaddrinfo(host, None))
    except OSError:
        pass
    return names


def missing_nodes(nodes: list[dict], hosts: list[str], cpus: float, gpus: float) -> list[str]:
    """Hosts of the allocation with no live Ray node holding ``cpus`` CPUs and ``gpus`` GPUs."""
    live = [n for n in nodes if n.get("Alive")]
    out = []
    for host in hosts:
        names = _addresses(host)
        match = [n for n in live if n.get("NodeManagerAddress") in names or n.get("NodeManagerHostname") in names]
        if not match:
            out.append(f"{host} (not joined)")
            continue
        res = match[0].get("Resources", {})
        if res.get("CPU", 0) < cpus or res.get("GPU", 0) < gpus:
            out.append(f"{host} (joined with {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU; "
                       f"expected {cpus:g} CPU, {gpus:g} GPU)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.slurm.wait")
    p.add_argument("--address", required=True)
    p.add_argument("--hosts", required=True, help="space-separated hostnames (scontrol show hostnames)")
    p.add_argument("--cpus-per-node", type=float, default=1)
    p.add_argument("--gpus-per-node", type=float, default=0)
    p.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    hosts = args.hosts.split()
    import ray

    deadline = time.monotonic() + args.timeout
    missing = hosts
    while time.monotonic() < deadline:
        try:
            if not ray.is_initialized():
                ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
            missing = missing_nodes(ray.nodes(), hosts, args.cpus_per_node, args.gpus_per_node)
            if not missing:
                print(f"[lorabench] all {len(hosts)} node(s) joined the Ray cluster at {args.address}", flush=True)
                return 0
        except Exception as e:  # the head itself may not be up yet
            missing = [f"the Ray head at {args.address} ({type(e).__name__}: {e})"]
        time.sleep(2)
    print(f"[lorabench] error: after {args.timeout:g}s these nodes had not joined the Ray cluster: "
          f"{'; '.join(missing)}. See the per-node logs next to the job log.", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
