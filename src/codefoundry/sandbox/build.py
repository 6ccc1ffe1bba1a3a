"""A compiled program's build and its keeper, inside the run (loaded by path into the zygote after jail.py;
standard library only).

The program's process compiles in a child (`build`), and then forks the program (`start_program`): the
child execs it, never holding the run's trusted notes; the parent, the keeper, waits for it, notes its use
of memory, and ends as it ended. `wait4` reports the largest resident set of a process *or any child it
reaped*, so the process that reaped the compiler (~190 MB for a `bits/stdc++.h` include) cannot report
the program's memory: a C++ program that used 4 MB was reported at 193 MB, and one that crashed with
SIGSEGV under a 128 MB limit was `memory_exceeded` (the verdict reads a crash near the limit as the
limit). The keeper's note is trusted: it is written by our code, on an fd the program never holds. A
program can still signal its keeper (same uid, same PID namespace): it only spoils its own report.
"""

import importlib
import json
import os
import resource
import signal
import struct
import sys

jail = sys.modules.get("codefoundry_jail") or importlib.import_module("codefoundry.sandbox.jail")
cgroup = jail.cgroup

BUILD_MESSAGES = 20000  # bytes of a failed build's messages kept (its first), at most Limits.output_bytes


def build(cmd: list[str], env: dict[str, str], limits: dict, note_fd: int) -> None:
    """Compile in a child with its own CPU budget, before any untrusted code runs in this process, and note
    on `note_fd` (trusted) how the build ended: its CPU time, which the run's limit does not count, or
    that it failed. A failed build's messages follow its note on stderr, cut to the run's output limit
    (the note says so): counted as the program's output, they had made a compile error an `output_limit`.
    A failed build that used its CPU limit is noted as such (`"limit": "cpu"`: a timeout, not a compile
    error). A build that worked notes the memory its binary asks for at exec (`static_mb`: a global array
    past the limit kills the program with SIGSEGV before it runs). After a build that worked, the
    program's own file limits hold again (`jail.drop_privileges`); after one that failed, this process
    exits (status 1)."""
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(err_w, 1), os.dup2(err_w, 2)
            # The compiler reads no input: the run's stdin is the program's (`#include "/dev/stdin"` read it).
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            jail.apply_run_limits(
                float(limits["compile_seconds"]), cgroup.build_memory_mb(limits["memory_mb"])
            )
            os.execve(cmd[0], cmd, env)
        finally:
            os._exit(127)
    os.close(err_w)
    keep = min(BUILD_MESSAGES, int(limits["output_bytes"]))
    out, cut = bytearray(), False
    while chunk := os.read(err_r, 65536):  # read to the end: the compiler must not block on a full pipe
        cut = cut or len(out) + len(chunk) > keep
        out += chunk[: max(0, keep - len(out))]
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the compiler's processes, all reaped by now
    cpu = used.ru_utime + used.ru_stime
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        binary = cmd[cmd.index("-o") + 1] if "-o" in cmd[:-1] else ""
        os.write(note_fd, f'{{"build_cpu": {cpu:.6f}, "static_mb": {_static_mb(binary):.2f}}}\n'.encode())
        # The program's own file limits again (lowering needs no privilege).
        for which, value in jail.file_limits(limits).items():
            resource.setrlimit(which, value)
        return
    # Each of the build's processes has RLIMIT_CPU of compile_seconds, in whole seconds rounded up
    # (jail.apply_run_limits): the gcc driver reports a cc1 it ended as an internal compiler error.
    out_of_time = cpu >= max(1, -(-float(limits["compile_seconds"]) // 1)) - 0.05
    note = {"phase": "compile", "truncated": cut} | ({"limit": "cpu"} if out_of_time else {})
    os.write(note_fd, (json.dumps(note) + "\n").encode())
    view = memoryview(out)
    while view:
        view = view[os.write(2, view) :]
    os._exit(1)


def _static_mb(path: str) -> float:
    """MB of memory a 64-bit ELF binary's loadable segments (code, data, zeroed globals) take at exec, or
    0 where it cannot be read as one."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:5] != b"\x7fELF\x02" or head[5] not in (1, 2):
                return 0.0
            order = "<" if head[5] == 1 else ">"  # EI_DATA: little or big endian
            (table_at,) = struct.unpack_from(order + "Q", head, 32)  # e_phoff
            entry, count = struct.unpack_from(order + "HH", head, 54)  # e_phentsize, e_phnum
            f.seek(table_at)
            table = f.read(entry * count)
    except OSError:
        return 0.0
    if entry < 48:  # an Elf64_Phdr: p_type (u32) at 0, p_memsz (u64) at 40
        return 0.0
    total = 0
    for at in range(0, len(table) - entry + 1, entry):
        if struct.unpack_from(order + "I", table, at)[0] == 1:  # PT_LOAD
            total += struct.unpack_from(order + "Q", table, at + 40)[0]
    return total / (1 << 20)


def start_program(note_fd: int, go_fd: int) -> None:
    """After a build: once the zygote has seen its end and put back the run's own memory limit (it then
    closes the other end of `go_fd`), return in a fresh child, which will become the program (the notes
    closed); this process keeps watch and never returns. The child is one more process of the uid: its
    RLIMIT_NPROC counts the keeper (`zygote.program_main`)."""
    while os.read(go_fd, 64):
        pass
    os.close(go_fd)
    pid = os.fork()
    if pid == 0:
        os.close(note_fd)  # trusted notes end here: untrusted code never holds them
        return
    try:
        os.closerange(0, note_fd)  # the run's output pipes and judge fds end with the program, not with us
        _, status, usage = os.wait4(pid, 0)
        os.write(note_fd, (json.dumps({"program_maxrss_kb": usage.ru_maxrss}) + "\n").encode())
        if os.WIFSIGNALED(status):
            _die_of(os.WTERMSIG(status))
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 70)
    finally:
        os._exit(70)  # a signal's handler raised, or a call failed: never back into the caller


def _die_of(sig: int) -> None:
    """End this process by `sig`, as the program ended (no core file: RLIMIT_CORE is 0)."""
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default is not to end the process: its shell-style status
