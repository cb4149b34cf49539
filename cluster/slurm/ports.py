"""Ports of one job's Ray cluster, derived from the SLURM job id.

Two jobs sharing a node (two users, two runs) must not collide, and every node of one job must
agree without talking: each job id gets its own block of :data:`BLOCK` ports below the Linux
ephemeral range (32768+), where connections' own source ports live.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST = 10000
BLOCK = 50   # 10 service ports + 40 worker ports per node
BLOCKS = 450  # 10000 + 450 * 50 = 32500 < 32768


@dataclass(frozen=True)
class RayPorts:
    gcs: int
    dashboard: int
    node_manager: int
    object_manager: int
    client_server: int
    dashboard_agent_grpc: int
    dashboard_agent_http: int
    metrics_export: int
    runtime_env_agent: int
    min_worker: int
    max_worker: int

    @classmethod
    def for_job(cls, job_id: int) -> "RayPorts":
        b = FIRST + (job_id % BLOCKS) * BLOCK
        return cls(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 10, b + BLOCK - 1)

    def start_args(self) -> list[str]:
        """``ray start`` options for every node (the head adds --port and the dashboard's)."""
        return [f"--node-manager-port={self.node_manager}", f"--object-manager-port={self.object_manager}",
                f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
                f"--dashboard-agent-listen-port={self.dashboard_agent_http}",
                f"--metrics-export-port={self.metrics_export}", f"--runtime-env-agent-port={self.runtime_env_agent}",
                f"--min-worker-port={self.min_worker}", f"--max-worker-port={self.max_worker}"]
