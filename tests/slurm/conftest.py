"""A real Slurm (slurmctld + slurmd from Debian's slurm-wlm) on this one machine, under a temp dir.

Started and stopped with launch/local_slurm.sh (auth/none, no cgroups; `down` stops every daemon by
the pid in its pid file). The two-node cluster runs two slurmd daemons with NodeAddr 127.0.0.2 and
127.0.0.3: loopback addresses that reach this host but differ from what the node names (which do
not resolve) or the host name would give, so a test can tell where an address came from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "launch" / "local_slurm.sh"


class SlurmCluster:
    def __init__(self, root: Path, nodes: dict[str, str]):
        self.root = root
        node_args = [f"{name}={addr}" for name, addr in nodes.items()]
        # Two CPUs per node: the smoke job's two tasks fit on one node, as on the 2-core test machine.
        up = subprocess.run(
            ["bash", str(LOCAL_SLURM), "up", str(root), *node_args, "--cpus", "2"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert up.returncode == 0, f"local Slurm did not start:\n{up.stderr}"
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        assert up.stdout.strip() == f"export SLURM_CONF={self.env['SLURM_CONF']}"

    def stop(self) -> None:
        subprocess.run(["bash", str(LOCAL_SLURM), "down", str(self.root)], check=True, timeout=60)

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 120, env: dict | None = None, cwd: Path = REPO
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, check=check, timeout=timeout, cwd=cwd
        )

    def sbatch_wait(
        self,
        script: str,
        *script_args: str,
        options: tuple[str, ...] = (),
        env: dict | None = None,
        timeout: float = 300,
        cwd: Path = REPO,
    ) -> tuple[int, str]:
        """Submit ``script`` from ``cwd`` (the checkout) and wait for it; returns (job exit code, job output)."""
        out = self.root / f"job-{time.monotonic_ns()}.out"
        proc = self.run(
            "sbatch",
            "--wait",
            f"--output={out}",
            *options,
            script,
            *script_args,
            check=False,
            timeout=timeout,
            env=env,
            cwd=cwd,
        )
        text = out.read_text() if out.exists() else ""
        return proc.returncode, f"{proc.stdout}{proc.stderr}{text}"


def _cluster(tmp_path_factory, nodes: dict[str, str]):
    if shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        pytest.fail("Slurm is not installed: run launch/bootstrap.sh (Debian package slurm-wlm)")
    root = tmp_path_factory.mktemp("slurm")
    cluster = SlurmCluster(root, nodes)
    try:
        yield cluster
    finally:
        cluster.stop()
        leftover = [p.name for p in root.glob("*.pid")]
        assert not leftover, f"daemons not stopped: {leftover}"


@pytest.fixture(scope="module")
def slurm_single_node(tmp_path_factory):
    yield from _cluster(tmp_path_factory, {"node1": "127.0.0.1"})


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory):
    yield from _cluster(tmp_path_factory, {"n1": "127.0.0.2", "n2": "127.0.0.3"})
