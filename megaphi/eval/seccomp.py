"""The seccomp filter every sandboxed process runs under, as classic BPF that bwrap loads (``--seccomp FD``).

It refuses (EPERM) the system calls that reach other processes' memory or the kernel's namespace and
mount machinery: ``ptrace``, ``process_vm_readv/writev``, ``unshare``, ``setns``, every mount call,
``clone`` with any new-namespace flag, and a handful of administrative calls no test program needs
(kernel modules, kexec, bpf, perf, keyrings, userfaultfd, io_uring, Linux AIO, swap, clock setting). Sockets of
any family but AF_UNIX answer EAFNOSUPPORT: the kernel's buffers of TCP, UDP and netlink sockets are not
charged to a cgroup v1 memory limit (a sandbox could hold gigabytes in them), and no test program needs
more network than a socketpair. ``clone3``
answers ENOSYS because its flags live in memory a filter cannot read; the C library then falls back
to ``clone``, whose flags the filter checks. A system call of another architecture (or the x32 ABI)
kills the process, so no second syscall table can be used to get around the list.

The program is assembled here from a short list of instructions (no libseccomp needed).
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_NR_OFFSET, _ARCH_OFFSET, _ARG0_LOW_OFFSET = 0, 4, 16  # args[0]'s low word (little endian)

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

_X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
CLONE_NEW_NAMESPACE_FLAGS = 0x7E020000
_AF_UNIX = 1  # the one socket family allowed

# Refused calls and their numbers per architecture (checked against the kernel's unistd headers).
_REFUSED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "pidfd_getfd",
    "kcmp",
    "lookup_dcookie",
    "chroot",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "clock_adjtime",
    "syslog",
    "vhangup",
    "sethostname",
    "setdomainname",
    "memfd_secret",
    "io_setup",
)  # Linux AIO events are a host-wide count (fs.aio-max-nr) that one call can take
# Calls added since Linux 5.1 have one number on every architecture (the kernel's unified table).
# fmt: off
_UNIFIED = dict(  # in the order of their numbers
    io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
    open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
    clone3=435, pidfd_getfd=438, mount_setattr=442, memfd_secret=447,
)
# fmt: on
_SYSCALLS = {
    "x86_64": dict(
        **_UNIFIED,
        audit_arch=0xC000003E,
        clone=56,
        ptrace=101,
        process_vm_readv=310,
        process_vm_writev=311,
        mount=165,
        umount2=166,
        pivot_root=155,
        unshare=272,
        setns=308,
        kexec_load=246,
        kexec_file_load=320,
        init_module=175,
        finit_module=313,
        delete_module=176,
        bpf=321,
        perf_event_open=298,
        keyctl=250,
        add_key=248,
        request_key=249,
        userfaultfd=323,
        open_by_handle_at=304,
        name_to_handle_at=303,
        swapon=167,
        swapoff=168,
        reboot=169,
        acct=163,
        quotactl=179,
        kcmp=312,
        lookup_dcookie=212,
        chroot=161,
        settimeofday=164,
        clock_settime=227,
        adjtimex=159,
        clock_adjtime=305,
        syslog=103,
        vhangup=153,
        sethostname=170,
        setdomainname=171,
        socket=41,
        socketpair=53,
        io_setup=206,
    ),
    "aarch64": dict(
        **_UNIFIED,
        audit_arch=0xC00000B7,
        clone=220,
        ptrace=117,
        process_vm_readv=270,
        process_vm_writev=271,
        mount=40,
        umount2=39,
        pivot_root=41,
        unshare=97,
        setns=268,
        kexec_load=104,
        kexec_file_load=294,
        init_module=105,
        finit_module=273,
        delete_module=106,
        bpf=280,
        perf_event_open=241,
        keyctl=219,
        add_key=217,
        request_key=218,
        userfaultfd=282,
        open_by_handle_at=265,
        name_to_handle_at=264,
        swapon=224,
        swapoff=225,
        reboot=142,
        acct=89,
        quotactl=60,
        kcmp=272,
        lookup_dcookie=18,
        chroot=51,
        settimeofday=170,
        clock_settime=112,
        adjtimex=171,
        clock_adjtime=266,
        syslog=116,
        vhangup=58,
        sethostname=161,
        setdomainname=162,
        socket=198,
        socketpair=199,
        io_setup=0,
    ),
}


class SeccompUnavailable(RuntimeError):
    """No seccomp filter is known for this machine's architecture."""


def _assemble(program: list[tuple]) -> bytes:
    """Instructions are (code, k) or (code, k, jump_if_true_label, jump_if_false_label); a str is a label."""
    labels: dict[str, int] = {}
    position = 0
    for item in program:
        if isinstance(item, str):
            labels[item] = position
        else:
            position += 1
    out, position = [], 0
    for item in program:
        if isinstance(item, str):
            continue
        code, k, *targets = item
        offsets = [0, 0]
        for i, target in enumerate(targets):
            if target is not None:
                offsets[i] = labels[target] - position - 1
                if not 0 <= offsets[i] <= 255:
                    raise AssertionError(f"seccomp jump to {target} out of range")
        out.append(struct.pack("=HBBI", code, offsets[0], offsets[1], k))
        position += 1
    return b"".join(out)


@functools.lru_cache(maxsize=None)
def filter_program(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (default: this one) as ``struct sock_filter`` bytes."""
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        raise SeccompUnavailable(
            f"no seccomp filter is defined for the {machine} architecture (known: {', '.join(_SYSCALLS)})"
        )
    numbers = _SYSCALLS[machine]
    program: list = [
        (_LD_W_ABS, _ARCH_OFFSET),
        (_JEQ_K, numbers["audit_arch"], None, "kill"),
        (_LD_W_ABS, _NR_OFFSET),
    ]
    if machine == "x86_64":
        program.append((_JGE_K, _X32_SYSCALL_BIT, "kill", None))
    program.append((_JEQ_K, numbers["clone"], "clone", None))
    program.append((_JEQ_K, numbers["clone3"], "enosys", None))
    program.append((_JEQ_K, numbers["socket"], "socket", None))
    program.append((_JEQ_K, numbers["socketpair"], "socket", None))
    program += [(_JEQ_K, numbers[name], "eperm", None) for name in _REFUSED]
    program += [
        (_RET_K, _RET_ALLOW),
        "clone",
        (_LD_W_ABS, _ARG0_LOW_OFFSET),
        (_JSET_K, CLONE_NEW_NAMESPACE_FLAGS, "eperm", None),
        (_RET_K, _RET_ALLOW),
        "socket",
        (_LD_W_ABS, _ARG0_LOW_OFFSET),  # the address family
        (_JEQ_K, _AF_UNIX, None, "eafnosupport"),
        (_RET_K, _RET_ALLOW),
        "eperm",
        (_RET_K, _RET_ERRNO | errno.EPERM),
        "enosys",
        (_RET_K, _RET_ERRNO | errno.ENOSYS),
        "eafnosupport",
        (_RET_K, _RET_ERRNO | errno.EAFNOSUPPORT),
        "kill",
        (_RET_K, _RET_KILL_PROCESS),
    ]
    return _assemble(program)
