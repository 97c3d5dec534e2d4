"""Per-sandbox cgroups: limits written where the kernel reads them, every process inside, emptied on kill."""

import os
import subprocess

import pytest

from megaphi.eval import cgroup
from megaphi.eval.cgroup import CgroupLimits, CgroupUnavailable


@pytest.fixture
def group():
    made = cgroup.cgroup_tree().create(CgroupLimits(memory_bytes=200 << 20, max_pids=7, cpu_cores=0.5))
    yield made
    made.kill()
    made.remove()


def read(directory, name):
    return open(os.path.join(directory, name)).read().split()


def test_limits_are_written_for_the_kernel(group):
    if group.version == 2:
        directory = group.directories[""]
        assert read(directory, "memory.max") == [str(200 << 20)] and read(directory, "pids.max") == ["7"]
        assert read(directory, "cpu.max") == ["50000", "100000"]
    else:
        assert read(group.directories["memory"], "memory.limit_in_bytes") == [str(200 << 20)]
        assert read(group.directories["pids"], "pids.max") == ["7"]
        assert read(group.directories["cpu"], "cpu.cfs_quota_us") == ["50000"]


def test_a_joined_command_and_its_children_live_in_the_group_until_killed(group):
    command = group.join_command(["/bin/sh", "-c", "cat /proc/self/oom_score_adj; sleep 60 & sleep 60 & echo ok; wait"])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert [proc.stdout.readline().strip() for _ in range(2)] == ["1000", "ok"]
    assert len(group.processes()) == 3  # the shell and both sleeps
    assert group.kill() and group.processes() == []
    proc.wait()
    group.remove()
    assert not any(os.path.exists(d) for d in group.directories.values())


def test_groups_left_by_a_killed_scorer_are_emptied_and_removed_and_live_ones_kept():
    tree = cgroup.cgroup_tree()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a scorer pid that no longer runs
    alive = subprocess.Popen(["sleep", "60"])  # one that still does
    leftover = cgroup.SandboxCgroup(
        tree.version, {c: os.path.join(p, f"megaphi-sandbox-{gone.pid}-0") for c, p in tree.parents.items()}
    )
    kept = cgroup.SandboxCgroup(
        tree.version, {c: os.path.join(p, f"megaphi-sandbox-{alive.pid}-0") for c, p in tree.parents.items()}
    )
    try:
        for directory in [*set(leftover.directories.values()), *set(kept.directories.values())]:
            os.mkdir(directory)
        survivor = subprocess.Popen(leftover.join_command(["sleep", "60"]))  # a sandbox process that outlived it
        while not leftover.processes():
            pass
        assert tree.remove_stale() == 1
        assert survivor.wait(10) == -9
        assert not any(os.path.exists(d) for d in leftover.directories.values())
        assert all(os.path.exists(d) for d in kept.directories.values())
    finally:
        alive.kill()
        for group in (leftover, kept):
            group.kill()
            group.remove()


def test_a_machine_without_cgroups_is_refused_with_the_remedy(monkeypatch, tmp_path):
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(cgroup, "_tree", None)
    with pytest.raises(CgroupUnavailable, match=f"no cgroup hierarchy is mounted at {tmp_path}: run the scorer as"):
        cgroup.cgroup_tree()


def _stand_in_v2_hierarchy(monkeypatch, tmp_path, job_controllers: str) -> None:
    """A stand-in for a cgroup v2 hierarchy in which the scorer's group is /job, offering
    ``job_controllers`` (plain files take the writes the kernel would)."""
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(cgroup, "_tree", None)
    monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/job"})
    (tmp_path / "job").mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "job" / "cgroup.controllers").write_text(job_controllers)


def test_a_cgroup_v2_group_lacking_controllers_is_named(monkeypatch, tmp_path):
    _stand_in_v2_hierarchy(monkeypatch, tmp_path, "cpu io\n")
    with pytest.raises(CgroupUnavailable, match="does not offer the memory, pids controller"):
        cgroup.cgroup_tree()


def test_a_cgroup_v2_group_gets_v2_limits_below_the_scorer_s_group(monkeypatch, tmp_path):
    _stand_in_v2_hierarchy(monkeypatch, tmp_path, "cpu io memory pids\n")
    tree = cgroup.cgroup_tree()
    assert (tree.version, tree.parents) == (2, {"": str(tmp_path / "job")})
    assert (tmp_path / "job" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    made = tree.create(CgroupLimits(memory_bytes=1 << 30, max_pids=16))
    directory = made.directories[""]
    assert os.path.dirname(directory) == str(tmp_path / "job")
    assert [read(directory, name) for name in ("memory.max", "memory.oom.group", "pids.max", "cpu.max")] == [
        [str(1 << 30)],
        ["1"],
        ["16"],
        ["100000", "100000"],
    ]
    assert f"echo $$ > {directory}/cgroup.procs" in made.join_command(["true"])[2]


def test_a_real_cgroup_v2_group_is_joined_accounted_and_killed_with_cgroup_kill():
    # Hybrid machines (like this project's) mount a controller-less cgroup v2 hierarchy beside v1:
    # enough to run the v2 paths that need no controller on a real kernel.
    root = cgroup.CGROUP_ROOT if cgroup.cgroup_tree().version == 2 else os.path.join(cgroup.CGROUP_ROOT, "unified")
    if not os.path.exists(os.path.join(root, "cgroup.procs")) or not os.access(root, os.W_OK):
        pytest.skip(f"no writable cgroup v2 hierarchy at {root}")
    directory = os.path.join(root, f"megaphi-sandbox-{os.getpid()}-v2")
    os.mkdir(directory)
    group = cgroup.SandboxCgroup(2, {"": directory})
    try:
        spin = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
        proc = subprocess.Popen(
            group.join_command(["/bin/sh", "-c", f"{spin}; sleep 60 & sleep 60 & echo ok; wait"]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ok"
        assert len(group.processes()) == 3 and group.cpu_seconds() > 0
        assert group.kill() and group.processes() == []
        proc.wait()
    finally:
        group.kill()
        group.remove()
    assert not os.path.exists(directory)


def _stand_in_group(directory, limit, usage, inactive_file, v2):
    directory.mkdir(parents=True, exist_ok=True)
    names = ("memory.max", "memory.current") if v2 else ("memory.limit_in_bytes", "memory.usage_in_bytes")
    (directory / names[0]).write_text(f"{limit}\n")
    (directory / names[1]).write_text(f"{usage}\n")
    key = "inactive_file" if v2 else "total_inactive_file"
    (directory / "memory.stat").write_text(f"anon 1\n{key} {inactive_file}\n")


@pytest.mark.parametrize("v2", [True, False], ids=["cgroup v2", "cgroup v1"])
def test_the_scorer_s_memory_room_is_the_tightest_group_above_it(monkeypatch, tmp_path, v2):
    # Stand-ins for the groups from the scorer's own up to the root: the job's limit is the tightest;
    # what the kernel reclaims before it kills (inactive file pages) counts as free.
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", str(tmp_path))
    base = tmp_path if v2 else tmp_path / "memory"
    if v2:
        (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
        monkeypatch.setattr(cgroup, "_own_paths", lambda: {"": "/job/scorer"})
    else:
        monkeypatch.setattr(cgroup, "_own_paths", lambda: {"memory": "/job/scorer"})
        monkeypatch.setattr(cgroup, "_v1_mounts", lambda: {"memory": str(base)})
    unlimited = "max" if v2 else str(1 << 62)
    _stand_in_group(base / "job" / "scorer", unlimited, 50 << 20, 0, v2)
    _stand_in_group(base / "job", 1 << 30, 300 << 20, 100 << 20, v2)
    _stand_in_group(base, 8 << 30, 2 << 30, 0, v2)
    room, source = cgroup.memory_room()
    assert room == (1 << 30) - (300 << 20) + (100 << 20)
    assert source == f"the memory cgroup {base / 'job'} (limit 1024 MiB)"
