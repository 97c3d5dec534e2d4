"""The seccomp filter: a well-formed BPF program for each known architecture, harmless to ordinary programs."""

import struct

import pytest

from megaphi.eval.sandbox import run_programs
from megaphi.eval.seccomp import _SYSCALLS, SeccompUnavailable, filter_program


@pytest.mark.parametrize("machine", list(_SYSCALLS))
def test_the_filter_checks_the_architecture_first_and_ends_in_returns(machine):
    program = filter_program(machine)
    instructions = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    assert len(program) % 8 == 0 and len(instructions) < 4096  # the kernel's BPF_MAXINSNS
    assert instructions[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert instructions[1][0] == 0x15 and instructions[1][3] == _SYSCALLS[machine]["audit_arch"]
    assert instructions[-1] == (0x06, 0, 0, 0x80000000)  # anything else: kill the process
    assert all(
        i + 1 + jt < len(instructions) and i + 1 + jf < len(instructions)
        for i, (code, jt, jf, _) in enumerate(instructions)
        if code & 0x07 == 0x05
    )


def test_an_unknown_architecture_is_named():
    with pytest.raises(SeccompUnavailable, match="no seccomp filter is defined for the sparc64 architecture"):
        filter_program("sparc64")


def test_processes_threads_and_subprocesses_still_start_under_the_filter():
    program = """
import os, subprocess, sys, threading
results = []
thread = threading.Thread(target=results.append, args=(1,))
thread.start()
thread.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
assert os.waitpid(pid, 0)[1] >> 8 == 7
assert subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True).stdout == "42\\n"
assert results == [1]
"""
    [result] = run_programs([program])
    assert result.passed, result.output
