"""A real Slurm (slurmctld + slurmd from Debian's slurm-wlm) on this one machine, under a temp dir.

No munge (auth/none), no cgroups; every daemon is started here and stopped by the pid in its pid
file. The two-node cluster runs two slurmd daemons on different ports, with NodeAddr 127.0.0.2 and
127.0.0.3: loopback addresses that reach this host but differ from what the node names (which do
not resolve) or the host name would give, so a test can tell where an address came from.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.distributed import free_port

REPO = Path(__file__).resolve().parents[2]


class SlurmCluster:
    def __init__(self, root: Path, nodes: dict[str, str], cpus_per_node: int = 2):
        self.root, self.nodes = root, nodes
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname=localhost NodeAddr={addr} Port={free_port()} "
            f"CPUs={cpus_per_node} RealMemory=4000 State=UNKNOWN" for name, addr in nodes.items())
        (root / "state").mkdir(parents=True)
        for name in nodes:
            (root / f"spool{name}").mkdir()
        self.conf.write_text(f"""\
ClusterName=megaphi-test
SlurmctldHost=localhost
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdPidFile={root}/slurmd-%n.pid
SlurmdLogFile={root}/slurmd-%n.log
{node_lines}
PartitionName=debug Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP
""")
        self.pid_files = [root / "slurmctld.pid"] + [root / f"slurmd-{n}.pid" for n in nodes]

    def start(self, timeout_s: float = 30) -> None:
        subprocess.run(["slurmctld"], env=self.env, check=True)
        for name in self.nodes:
            subprocess.run(["slurmd", "-N", name], env=self.env, check=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
            if len(states) == len(self.nodes) and all(s == "idle" for s in states):
                return
            time.sleep(0.2)
        raise RuntimeError(f"Slurm nodes not idle after {timeout_s}s; see logs in {self.root}")

    def stop(self, timeout_s: float = 15) -> None:
        pids = [int(f.read_text()) for f in self.pid_files if f.exists() and f.read_text().strip()]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            _signal(pid, signal.SIGKILL)

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=kwargs.pop("env", self.env), capture_output=True, text=True,
                              check=check, timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)

    def sbatch_wait(self, script: str, *script_args: str, options: tuple[str, ...] = (),
                    env: dict | None = None, timeout: float = 300) -> tuple[int, str]:
        """Submit ``script`` from the checkout, wait for it; returns (exit code, job output)."""
        out = self.root / f"job-{time.monotonic_ns()}.out"
        proc = self.run("sbatch", "--wait", f"--output={out}", *options, script, *script_args,
                        check=False, timeout=timeout, env={**self.env, **(env or {})})
        text = out.read_text() if out.exists() else ""
        return proc.returncode, f"{proc.stdout}{proc.stderr}{text}"


def _alive(pid: int) -> bool:
    # The daemons are not our children: once dead they may linger as zombies until init reaps them.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _cluster(tmp_path_factory, nodes: dict[str, str]):
    if shutil.which("slurmctld") is None or shutil.which("slurmd") is None:
        pytest.fail("Slurm is not installed: run launch/bootstrap.sh (Debian package slurm-wlm)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm_single_node(tmp_path_factory):
    yield from _cluster(tmp_path_factory, {"node1": "127.0.0.1"})


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory):
    yield from _cluster(tmp_path_factory, {"n1": "127.0.0.2", "n2": "127.0.0.3"})
