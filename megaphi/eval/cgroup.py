"""One cgroup per sandboxed process: memory (anonymous, shared, tmpfs and memfd pages alike), process
count and CPU share bounded for everything the process starts, and killed and checked empty afterwards.

Both cgroup versions are supported. cgroup v2 (a single ``cgroup2`` mount with
``/sys/fs/cgroup/cgroup.controllers``, most current clusters) uses ``memory.max``, ``memory.swap.max``,
``memory.oom.group``, ``pids.max``, ``cpu.max`` and ``cgroup.kill``; cgroup v1 (one mount per controller)
uses ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes``), ``pids.max``,
``cpu.cfs_quota_us`` and ``cpuacct.usage``. Sandbox groups are made below this process's own group, so whatever limit the
machine puts on this process also bounds them. Where a group cannot be made or a controller is
missing, ``CgroupUnavailable`` says what and how to fix it: limits are never silently dropped.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shlex
import signal
import time
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
_V2_CONTROLLERS = ("memory", "pids", "cpu")
_CPU_PERIOD_US = 100_000
_counter = itertools.count()


class CgroupUnavailable(RuntimeError):
    """The per-sandbox cgroup limits cannot be enforced on this machine."""


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int  # everything the group's processes allocate, shared memory and tmpfs included
    max_pids: int  # processes and threads, all together
    cpu_cores: float = 1.0  # CPU share: at most this many cores' worth of time per wall-clock second


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _procs(directory: str) -> list[int]:
    try:
        return [int(line) for line in _read(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def _own_paths() -> dict[str, str]:
    """This process's group in each hierarchy: {controller or "" for v2: path}."""
    paths = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _v1_mounts() -> dict[str, str]:
    """{controller: mount point} for every cgroup v1 hierarchy."""
    mounts = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup":
            for option in fields[separator + 3].split(","):
                mounts[option] = fields[4]
    return mounts


class SandboxCgroup:
    """The group(s) of one sandboxed process; one directory per hierarchy (one in v2)."""

    def __init__(self, version: int, directories: dict[str, str]):
        self.version = version
        self.directories = directories  # {controller: directory}; v2: {"": directory}
        self._main = directories["memory"] if version == 1 else directories[""]

    def join_command(self, command: list[str]) -> list[str]:
        """``command`` prefixed so that it runs inside this group, preferred by the OOM killer.

        A shell moves itself in and then execs the command, so every process the command starts is
        born inside the group (moving a process afterwards would leave its early children outside).
        """
        moves = " && ".join(
            f"echo $$ > {shlex.quote(os.path.join(d, 'cgroup.procs'))}" for d in sorted(set(self.directories.values()))
        )
        return ["/bin/sh", "-c", f'{moves} && echo 1000 > /proc/self/oom_score_adj && exec "$@"', "sh", *command]

    def processes(self) -> list[int]:
        return sorted({pid for d in set(self.directories.values()) for pid in _procs(d)})

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this group for crossing its memory limit."""
        try:
            text = _read(os.path.join(self._main, "memory.events" if self.version == 2 else "memory.oom_control"))
        except FileNotFoundError:
            return False
        counts = dict(line.split() for line in text.splitlines() if line.strip())
        return int(counts.get("oom_kill", 0)) > 0

    def memory_peak(self) -> int:
        """The most memory the group held at once, in bytes (0 where the kernel does not say)."""
        try:
            return int(
                _read(os.path.join(self._main, "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"))
            )
        except (FileNotFoundError, ValueError):
            return 0

    def signal_all(self) -> bool:
        """SIGKILL every process now in the group; False when there was none."""
        pids = self.processes()
        if pids and self.version == 2:
            try:
                _write(os.path.join(self._main, "cgroup.kill"), "1")
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return bool(pids)

    def cpu_seconds(self) -> float:
        """CPU time used by every process that has been in the group, in seconds."""
        try:
            if self.version == 2:
                stat = dict(line.split() for line in _read(os.path.join(self._main, "cpu.stat")).splitlines())
                return int(stat["usage_usec"]) / 1e6
            return int(_read(os.path.join(self.directories["cpuacct"], "cpuacct.usage"))) / 1e9
        except (FileNotFoundError, KeyError, ValueError):
            return 0.0

    def kill(self, wait_s: float = 5.0) -> bool:
        """SIGKILL every process of the group until it is empty; False when some survive ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while self.signal_all():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def remove(self) -> None:
        for directory in set(self.directories.values()):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass


_STALE_GROUP = re.compile(r"megaphi-(?:sandbox|scorer)-(\d+)(?:-\d+)?")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CgroupTree:
    """Where this process can make sandbox groups, and how to limit them."""

    def __init__(self, version: int, parents: dict[str, str]):
        self.version = version
        self.parents = parents  # {controller: parent directory}; v2: {"": parent directory}

    def remove_stale(self) -> int:
        """Kill and remove the groups of scorers that no longer run (one killed with SIGKILL cannot
        clean up after itself); a group whose scorer's pid is alive is left alone. Returns how many."""
        stale: dict[str, dict[str, str]] = {}
        for controller, parent in self.parents.items():
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for name in names:
                match = _STALE_GROUP.fullmatch(name)
                if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                    stale.setdefault(name, {})[controller] = os.path.join(parent, name)
        for directories in stale.values():
            group = SandboxCgroup(self.version, directories)
            try:
                group.kill()
                group.remove()
            except OSError:  # another scorer removing the same leftovers, or a process that will not die
                pass
        return len(stale)

    def create(self, limits: CgroupLimits) -> SandboxCgroup:
        name = f"megaphi-sandbox-{os.getpid()}-{next(_counter)}"
        directories = {controller: os.path.join(parent, name) for controller, parent in self.parents.items()}
        group = SandboxCgroup(self.version, directories)
        try:
            for directory in set(directories.values()):
                os.mkdir(directory)
            if self.version == 2:
                self._limit_v2(directories[""], limits)
            else:
                self._limit_v1(directories, limits)
        except OSError as error:
            group.remove()
            raise CgroupUnavailable(f"could not make or limit the sandbox cgroup {name} ({error})") from None
        return group

    @staticmethod
    def _limit_v2(directory: str, limits: CgroupLimits) -> None:
        _write(os.path.join(directory, "memory.max"), str(limits.memory_bytes))
        if os.path.exists(os.path.join(directory, "memory.swap.max")):
            _write(os.path.join(directory, "memory.swap.max"), "0")
        _write(os.path.join(directory, "memory.oom.group"), "1")  # an OOM kill takes the whole sandbox
        _write(os.path.join(directory, "pids.max"), str(limits.max_pids))
        _write(os.path.join(directory, "cpu.max"), f"{int(limits.cpu_cores * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")

    @staticmethod
    def _limit_v1(directories: dict[str, str], limits: CgroupLimits) -> None:
        memory = directories["memory"]
        _write(os.path.join(memory, "memory.limit_in_bytes"), str(limits.memory_bytes))
        if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):  # no way around it by swapping
            _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
        _write(os.path.join(directories["pids"], "pids.max"), str(limits.max_pids))
        _write(os.path.join(directories["cpu"], "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
        _write(os.path.join(directories["cpu"], "cpu.cfs_quota_us"), str(int(limits.cpu_cores * _CPU_PERIOD_US)))


_REMEDY = (
    "run the scorer as root, or inside a cgroup v2 subtree delegated to this user with the memory, "
    "pids and cpu controllers (e.g. systemd-run --user --scope -p Delegate=yes ...)"
)


def _detect_v2() -> CgroupTree:
    own = os.path.join(CGROUP_ROOT, _own_paths().get("", "/").lstrip("/"))
    available = _read(os.path.join(own, "cgroup.controllers")).split()
    missing = [c for c in _V2_CONTROLLERS if c not in available]
    if missing:
        raise CgroupUnavailable(
            f"cgroup v2 group {own} does not offer the {', '.join(missing)} controller(s): {_REMEDY}"
        )
    enable = " ".join("+" + c for c in _V2_CONTROLLERS)
    try:
        _write(os.path.join(own, "cgroup.subtree_control"), enable)
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise CgroupUnavailable(f"cannot enable controllers below {own} ({error}): {_REMEDY}") from None
        # cgroup v2 lets a group hand controllers to children only when it holds no process itself:
        # this process moves into a leaf of its own first.
        leaf = os.path.join(own, f"megaphi-scorer-{os.getpid()}")
        try:
            os.makedirs(leaf, exist_ok=True)
            _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
            _write(os.path.join(own, "cgroup.subtree_control"), enable)
        except OSError as error:
            raise CgroupUnavailable(
                f"cannot enable controllers below {own} ({error}; other processes may share it): {_REMEDY}"
            ) from None
    return CgroupTree(2, {"": own})


def _detect_v1() -> CgroupTree:
    mounts, own = _v1_mounts(), _own_paths()
    missing = [c for c in _V1_CONTROLLERS if c not in mounts]
    if missing:
        raise CgroupUnavailable(f"the cgroup v1 controller(s) {', '.join(missing)} are not mounted: {_REMEDY}")
    parents = {c: os.path.join(mounts[c], own.get(c, "/").lstrip("/")) for c in _V1_CONTROLLERS}
    unwritable = [p for p in parents.values() if not os.access(p, os.W_OK)]
    if unwritable:
        raise CgroupUnavailable(f"cannot make sandbox groups in {', '.join(unwritable)}: {_REMEDY}")
    return CgroupTree(1, parents)


_tree: CgroupTree | None = None


def cgroup_tree() -> CgroupTree:
    """This machine's cgroup hierarchy for sandboxes (detected once); raises CgroupUnavailable."""
    global _tree
    if _tree is None:
        if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
            _tree = _detect_v2()
        elif os.path.isdir(os.path.join(CGROUP_ROOT, "memory")):
            _tree = _detect_v1()
        else:
            raise CgroupUnavailable(f"no cgroup hierarchy is mounted at {CGROUP_ROOT}: {_REMEDY}")
        _tree.remove_stale()
    return _tree


def memory_room() -> tuple[int, str]:
    """The memory this process's sandboxes can still use, in bytes, and where that bound comes from: the
    tightest of every memory group from this process's own up to the root (limit less what is in use,
    inactive file pages not counted: the kernel reclaims them before it kills) and the host's
    MemAvailable. Sandbox groups sit below this process's own, so each of those limits bounds them all."""
    meminfo = dict(line.split(":", 1) for line in _read("/proc/meminfo").splitlines())
    room, source = int(meminfo["MemAvailable"].split()[0]) << 10, "the host's MemAvailable"
    if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        base, path = CGROUP_ROOT, _own_paths().get("", "/")
        limit_file, usage_file, inactive_key = "memory.max", "memory.current", "inactive_file"
    else:
        base, path = _v1_mounts().get("memory", ""), _own_paths().get("memory", "/")
        limit_file, usage_file, inactive_key = "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
    directory = os.path.normpath(os.path.join(base, path.lstrip("/"))) if base else ""
    while directory:
        try:
            limit = _read(os.path.join(directory, limit_file)).strip()
            if limit != "max":  # v2 says "max" for no limit; v1 a number larger than MemAvailable
                stat = dict(line.split() for line in _read(os.path.join(directory, "memory.stat")).splitlines())
                left = int(limit) - int(_read(os.path.join(directory, usage_file))) + int(stat.get(inactive_key, 0))
                if left < room:
                    room, source = left, f"the memory cgroup {directory} (limit {int(limit) >> 20} MiB)"
        except FileNotFoundError:  # the v2 root group has no limit
            pass
        directory = "" if directory == base else os.path.dirname(directory)
    return max(room, 0), source


def protect_from_oom_killer() -> int:
    """Make this process the OOM killer's last choice (-1000, or as low as this user may set); returns
    the value now in effect. Sandboxes raise theirs to 1000, so a memory squeeze takes them first."""
    path = "/proc/self/oom_score_adj"
    try:
        _write(path, "-1000")
    except OSError:  # lowering needs CAP_SYS_RESOURCE; keep what we have
        pass
    return int(_read(path))
