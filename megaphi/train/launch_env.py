"""Who am I in the job? Rank, world size and rendezvous discovery shared by every launcher.

The trainer calls ``apply_to_environ()`` before ``torch.distributed.init_process_group`` (or
``deepspeed.init_distributed``); afterwards RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT are set for the ``env://`` rendezvous, whichever way the processes were
started:

- ``torchrun`` / ``deepspeed`` launcher / anything that already exports RANK and WORLD_SIZE:
  taken as given (the launcher owns the rendezvous).
- ``mpirun`` (Open MPI, or MPICH/Intel MPI's PMI): rank and size from mpi4py; local rank from
  Open MPI's node map, else by grouping processor names; rank 0 picks the rendezvous address and
  a free port and broadcasts them.
- ``srun`` (one task per GPU, or per CPU process): SLURM_PROCID / SLURM_STEP_NUM_TASKS /
  SLURM_LOCALID; the rendezvous host is the first node of the step, and its address is the node's
  ``NodeAddr`` read with ``scontrol show node`` (node names need not resolve on real clusters); the
  port is derived from the job id so that every task computes the same one without talking.
- nothing: a single process on 127.0.0.1 with a free port.

MASTER_ADDR / MASTER_PORT already in the environment always win, so a site can pin them.

As a CLI: ``python -m megaphi.train.launch_env show|hostfile|check`` prints the discovered
environment, writes a DeepSpeed hostfile for the current Slurm allocation, or checks the wiring
with one all-reduce across all processes.

(Just over 400 lines on purpose: the launchers' discoveries are short and share one result type, its
error and its checks; Slurm's node-list and count notations, read by the srun discovery and by the
hostfile command, raise that same error and stay beside it.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping, MutableMapping, Sequence

from megaphi.common.cli import entry_point
from megaphi.common.errors import UserError
from megaphi.common.files import atomic_write_text
from megaphi.common.net import free_port

# Slurm's hostlist syntax: "gpu[01-03,7],login1" -> gpu01 gpu02 gpu03 gpu07 login1.
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
# Slurm's compressed per-node counts: "8(x2),4" -> 8 8 4.
_COUNT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")
# Ports derived from the Slurm job id land in [base, base + span): above the well-known and
# registered ports most services use, below Linux's default ephemeral range (32768+).
_SLURM_PORT_BASE = 15000
_SLURM_PORT_SPAN = 15000


class LaunchError(UserError):
    """The environment describes an impossible or incomplete launch."""


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in the job and where the ``env://`` rendezvous is."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "deepspeed" | "env" | "mpi" | "slurm" | "single"

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise LaunchError(f"rank {self.rank} is outside world size {self.world_size} ({self.launcher} launch)")
        if not 0 <= self.local_rank < self.local_world_size:
            raise LaunchError(
                f"local rank {self.local_rank} is outside local world size "
                f"{self.local_world_size} ({self.launcher} launch)"
            )
        if not 0 < self.master_port < 65536:
            raise LaunchError(f"master port {self.master_port} is not a TCP port; set MASTER_PORT to 1-65535")

    def as_environ(self) -> dict[str, str]:
        """The variables torch.distributed's ``env://`` rendezvous (and DeepSpeed) read."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }

    def apply_to_environ(self, environ: MutableMapping[str, str] | None = None) -> "LaunchEnv":
        """Export this launch into ``environ`` (default ``os.environ``); returns self."""
        (os.environ if environ is None else environ).update(self.as_environ())
        return self

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world_size} (local {self.local_rank}/{self.local_world_size}) "
            f"on {host_name()}, rendezvous {self.master_addr}:{self.master_port} via {self.launcher}"
        )


def discover(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """Work out rank, world size and rendezvous from the launcher's environment.

    Precedence: RANK/WORLD_SIZE (torchrun, deepspeed, manual) > Open MPI's mpirun > srun >
    other MPIs' PMI > a single process. Raises ``LaunchError`` with one line naming the bad variable.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "WORLD_SIZE" in env:
        return _from_rank_env(env)
    # mpirun inside an allocation starts its daemons with srun, so its processes inherit the
    # daemons' SLURM_* (one "task" per node): MPI's view must win. srun's own PMI plugin (pmi2)
    # also exports PMI_RANK/PMI_SIZE, but then they agree with Slurm's.
    if "OMPI_COMM_WORLD_SIZE" in env:
        return _from_mpi(env)
    if (
        _in_srun_step(env)
        and env.get("PMI_SIZE", env["SLURM_STEP_NUM_TASKS"]) == env["SLURM_STEP_NUM_TASKS"]
        and env.get("PMI_RANK", env["SLURM_PROCID"]) == env["SLURM_PROCID"]
    ):
        return _from_slurm(env)
    if "PMI_SIZE" in env:
        return _from_mpi(env)
    return LaunchEnv(
        0,
        1,
        0,
        1,
        env.get("MASTER_ADDR", "127.0.0.1"),
        _int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port(),
        "single",
    )


def apply_to_environ(environ: MutableMapping[str, str] | None = None) -> LaunchEnv:
    """``discover()`` then export the result into ``environ`` (default ``os.environ``)."""
    return discover(environ).apply_to_environ(environ)


def host_name() -> str:
    """This process's node: Slurm's node name under srun (several may share a host), else the hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


# --- RANK/WORLD_SIZE launchers ------------------------------------------------------------------


def _from_rank_env(env: Mapping[str, str]) -> LaunchEnv:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if name not in env:
            raise LaunchError(
                f"RANK/WORLD_SIZE are set but {name} is not; export {name} too "
                "(or start the job with torchrun, deepspeed, mpirun or srun)"
            )
    if "TORCHELASTIC_RUN_ID" in env:
        launcher = "torchrun"
    elif "CROSS_RANK" in env and "LOCAL_SIZE" in env:
        launcher = "deepspeed"
    else:
        launcher = "env"
    world_size = _int(env, "WORLD_SIZE")
    # deepspeed's launcher says LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE; a hand-made launch may say
    # neither, which only makes sense on one node.
    local_name = next((name for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE") if name in env), None)
    local_world_size = _int(env, local_name) if local_name else world_size
    rank = _int(env, "RANK")
    local_rank = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank % local_world_size
    return LaunchEnv(
        rank, world_size, local_rank, local_world_size, env["MASTER_ADDR"], _int(env, "MASTER_PORT"), launcher
    )


# --- mpirun ---------------------------------------------------------------------------------------


def _from_mpi(env: Mapping[str, str]) -> LaunchEnv:
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise LaunchError(
            "started by mpirun but mpi4py is not importable; `pip install mpi4py` "
            "(the megaphi[mpi] extra) or export RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT"
        ) from e
    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(MPI.Get_processor_name())
    if "OMPI_COMM_WORLD_LOCAL_RANK" in env and "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
        # Open MPI's own node map (one daemon per hostfile node) wins: DeepSpeed checks LOCAL_RANK
        # against it, and two hostfile nodes may share a processor name.
        local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
        local_world_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
    else:
        local_rank = hosts[:rank].count(hosts[rank])
        local_world_size = hosts.count(hosts[rank])
    rendezvous = None
    if rank == 0:
        # One host: loopback always works. Several: other hosts reach rank 0 by the name mpirun
        # itself used to reach it.
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else hosts[0])
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port()
        rendezvous = (addr, port)
    addr, port = comm.bcast(rendezvous, root=0)
    return LaunchEnv(rank, world_size, local_rank, local_world_size, addr, port, "mpi")


# --- srun -----------------------------------------------------------------------------------------


def _in_srun_step(env: Mapping[str, str]) -> bool:
    # The batch script itself also sees SLURM_PROCID=0 and the job's task count; only a step
    # started by srun has a numeric step id and its own task count.
    return "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env and env.get("SLURM_STEP_ID", "").isdigit()


def _from_slurm(env: Mapping[str, str]) -> LaunchEnv:
    rank = _int(env, "SLURM_PROCID")
    world_size = _int(env, "SLURM_STEP_NUM_TASKS")
    local_rank = _int(env, "SLURM_LOCALID")
    per_node = expand_counts(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""))
    node_index = _int(env, "SLURM_NODEID")
    if node_index >= len(per_node):
        raise LaunchError(
            f"SLURM_NODEID={node_index} but SLURM_STEP_TASKS_PER_NODE lists only "
            f"{len(per_node)} nodes; run the trainer under srun"
        )
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are unset; run the trainer under srun")
    addr = env.get("MASTER_ADDR") or node_address(expand_hostlist(nodelist)[0])
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else slurm_port(env)
    return LaunchEnv(rank, world_size, local_rank, per_node[node_index], addr, port, "slurm")


def slurm_port(env: Mapping[str, str]) -> int:
    """A rendezvous port every task of a step derives alike: from the job and step ids."""
    job = _int(env, "SLURM_JOB_ID")
    step = int(env.get("SLURM_STEP_ID", "0")) if env.get("SLURM_STEP_ID", "").isdigit() else 0
    # Different steps of one job get different ports, so a step that starts while the previous
    # one's sockets linger does not collide with them.
    return _SLURM_PORT_BASE + (job * 101 + step) % _SLURM_PORT_SPAN


def expand_hostlist(expr: str) -> list[str]:
    """Expand Slurm's hostlist syntax (``n[1-3,07],gpu-a[1-2]-b[1-2]``) like ``scontrol show hostnames``."""
    names: list[str] = []
    for item in _split_top_level(expr.strip()):
        names.extend(_expand_item(item))
    if not names:
        raise LaunchError(f"empty Slurm node list {expr!r}")
    return names


def _split_top_level(expr: str) -> list[str]:
    items, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise LaunchError(f"malformed Slurm node list {expr!r}: unbalanced or nested brackets")
        if ch == "," and depth == 0:
            items.append(expr[start:i])
            start = i + 1
    if depth:
        raise LaunchError(f"malformed Slurm node list {expr!r}: unclosed bracket")
    items.append(expr[start:])
    return [item for item in items if item]


def _expand_item(item: str) -> list[str]:
    match = _BRACKET.search(item)
    if match is None:
        return [item]
    head, tail = item[: match.start()], item[match.end() :]
    out: list[str] = []
    for part in match.group(1).split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise LaunchError(f"malformed range {part!r} in Slurm node list item {item!r}")
        width = len(lo)  # Slurm keeps the zero padding of the lower bound
        for n in range(int(lo), int(hi or lo) + 1):
            out.extend(head + str(n).zfill(width) + rest for rest in _expand_item(tail))
    return out


def expand_counts(expr: str) -> list[int]:
    """Expand Slurm's compressed per-node counts: ``"8(x2),4"`` -> ``[8, 8, 4]``."""
    counts: list[int] = []
    for part in expr.split(","):
        match = _COUNT.match(part.strip())
        if match is None:
            raise LaunchError(f"malformed Slurm tasks-per-node list {expr!r}; expected e.g. '8(x2),4'")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def node_address(node: str, scontrol: str = "scontrol") -> str:
    """The ``NodeAddr`` Slurm uses to reach ``node`` (names need not resolve in DNS)."""
    try:
        out = subprocess.run(
            [scontrol, "show", "node", node], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        raise LaunchError(
            f"cannot read NodeAddr of Slurm node {node!r} with `{scontrol} show node`: "
            f"{detail.strip()}; set MASTER_ADDR to override"
        ) from e
    match = re.search(r"\bNodeAddr=(\S+)", out)
    if match is None:
        raise LaunchError(f"`{scontrol} show node {node}` printed no NodeAddr; set MASTER_ADDR to override")
    return match.group(1)


def slurm_hostfile(environ: Mapping[str, str] | None = None, slots: int | None = None) -> list[tuple[str, int]]:
    """(address, slots) for every node of the current Slurm job, in DeepSpeed hostfile order.

    Slots: ``slots`` if given, else SLURM_GPUS_ON_NODE, else the job's tasks per node.
    """
    env = os.environ if environ is None else environ
    nodelist = env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is unset; write a hostfile inside a Slurm allocation (sbatch/salloc)")
    nodes = expand_hostlist(nodelist)
    if slots is not None:
        per_node = [slots] * len(nodes)
    elif env.get("SLURM_GPUS_ON_NODE"):
        per_node = [_int(env, "SLURM_GPUS_ON_NODE")] * len(nodes)
    elif env.get("SLURM_TASKS_PER_NODE"):
        per_node = expand_counts(env["SLURM_TASKS_PER_NODE"])
    else:
        raise LaunchError("no slots per node: pass --slots or run inside an allocation with GPUs or tasks")
    if len(per_node) != len(nodes):
        raise LaunchError(f"SLURM_TASKS_PER_NODE covers {len(per_node)} nodes but the job has {len(nodes)}")
    return [(node_address(node), n) for node, n in zip(nodes, per_node)]


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer; fix or unset it") from None


# --- CLI ------------------------------------------------------------------------------------------


def check_collectives(launch: LaunchEnv) -> float:
    """Join the process group through ``launch`` and all-reduce the ranks; returns the sum."""
    import torch
    import torch.distributed as dist

    launch.apply_to_environ()
    dist.init_process_group("gloo", init_method="env://")
    try:
        total = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(total)
        expected = launch.world_size * (launch.world_size - 1) / 2
        if total.item() != expected or dist.get_world_size() != launch.world_size:
            raise LaunchError(f"all-reduce of ranks gave {total.item()}, expected {expected}")
        return total.item()
    finally:
        dist.destroy_process_group()


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megaphi.train.launch_env", description=__doc__.split("\n")[0])
    # The deepspeed launcher inserts --local_rank=N before the arguments; the environment has it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print this process's discovered launch environment")
    show.add_argument(
        "--format",
        choices=["json", "exports"],
        default="json",
        help="json (default) or `export NAME=value` lines for `eval` in a shell",
    )
    hostfile = sub.add_parser("hostfile", help="write a DeepSpeed hostfile for the current Slurm job")
    hostfile.add_argument("--out", required=True, help="path of the hostfile to write")
    hostfile.add_argument(
        "--slots", type=int, default=None, help="processes per node (default: SLURM_GPUS_ON_NODE, else tasks per node)"
    )
    sub.add_parser("check", help="join the process group and all-reduce once (run it under the launcher)")
    args = parser.parse_args(argv)
    if args.command == "show":
        launch = discover()
        if args.format == "json":
            print(json.dumps({**dataclasses.asdict(launch), "host": host_name()}))
        else:
            print("\n".join(f"export {k}={v}" for k, v in launch.as_environ().items()))
    elif args.command == "hostfile":
        lines = [f"{addr} slots={n}" for addr, n in slurm_hostfile(slots=args.slots)]
        atomic_write_text(args.out, "\n".join(lines) + "\n")
        print(f"wrote {args.out}: {len(lines)} nodes")
    else:
        launch = discover()
        total = check_collectives(launch)
        print(f"{launch.describe()}: all-reduce ok (sum of ranks {total:g})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
