"""The sandbox's system-call filter (seccomp-BPF): on every program, build, judge and parse helper.

Loaded by path into the zygote before jail.py (standard library only). Linux on x86_64 and aarch64;
elsewhere, or where the kernel refuses the filter, `probe` says why and nothing is filtered (the results'
`extra["syscall_filter"]` tells). The template (zygote.py), which forks every program, sets it once after
its own set-up, so programs are born under it and a run pays nothing to set it (set in each run's
process, it cost ~10% of judged runs per second); the judge and the parse helper set it when they drop
privileges.

Denied are calls that no program graded here needs and that either reach past the program's own
processes or hand a large part of the kernel to untrusted input (the surface most container escapes use):
- other processes: ptrace, process_vm_readv/writev, pidfd_getfd, process_madvise, kcmp, move_pages,
  migrate_pages;
- namespaces and mounts: clone with any CLONE_NEW* flag, unshare with any but CLONE_NEWIPC, mount,
  umount2, the new mount API (fsopen ... mount_setattr), pivot_root, chroot: a program cannot make a user
  namespace of its own and be root inside it;
- code in the kernel: bpf, perf_event_open, userfaultfd, io_uring, kexec, module loading;
- Linux AIO's contexts (io_setup): the events they reserve come from one budget for the whole machine
  (fs.aio-max-nr), which one run could hold, and the host's and other workers' io_setup then failed;
- kernel keyrings (add_key, request_key, keyctl), the kernel log (syslog), files by handle
  (open_by_handle_at, name_to_handle_at), fanotify, quotas, swap, reboot, process accounting, setting
  the clocks, vhangup, and x86's iopl, ioperm, modify_ldt and uselib;
- the mount table, which /proc would show (statmount, listmount: there is no /proc inside);
- sockets of any family but Unix, IPv4, IPv6 and netlink's routing protocol (socket, socketpair): vsock
  above all, which no network namespace bounds (it reaches a virtual machine's host, and its ports are the
  whole machine's), netlink's uevents (the host's device and module events reach every network namespace
  the host's user namespace owns), and the rarely used families whose kernel code has the longest record
  of bugs (AF_ALG, RDS, TIPC, ...). They fail with EAFNOSUPPORT (EPROTONOSUPPORT: another netlink
  protocol), as where the kernel lacks them.
The rest fail with EPERM, except clone3, io_uring_setup/enter/register and io_setup, which fail with ENOSYS:
runtimes read that as an older kernel and fall back (glibc's threads and posix_spawn to clone, libuv to its
thread pool; glibc's POSIX aio uses threads, not io_setup). A call through another ABI kills the process
(x86's int 0x80: its numbers mean other calls), or fails (x32's, every one of them).
Left to capabilities, because the template needs them under the filter: setns (it enters each run's PID
and IPC namespaces) and unshare(CLONE_NEWIPC) (a program's process, still root, takes an IPC namespace of
its own where runs share none). Both need CAP_SYS_ADMIN, which no program holds.

Not covered: every other call (files, sockets, memory, signals, ...) and the kernel code behind them.
"""

import ctypes
import os
import struct

# name: (x86_64 number, aarch64 number); None where the architecture has no such call. Checked against
# the C library's headers by tests/sandbox/test_seccomp.py.
DENIED = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438), "process_madvise": (440, 440), "kcmp": (312, 272), "move_pages": (279, 239),
    "migrate_pages": (256, 238), "mount": (165, 40), "umount2": (166, 39), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "pivot_root": (155, 41), "chroot": (161, 51),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "syslog": (103, 116), "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "fanotify_init": (300, 262), "quotactl": (179, 60), "quotactl_fd": (443, 443), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "clock_adjtime": (305, 266), "adjtimex": (159, 171), "vhangup": (153, 58),
    "lookup_dcookie": (212, 18), "iopl": (172, None), "ioperm": (173, None), "modify_ldt": (154, None),
    "uselib": (134, None), "statmount": (457, 457), "listmount": (458, 458),
}  # fmt: skip
ABSENT = {"clone3": (435, 435), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
          "io_uring_register": (427, 427), "io_setup": (206, 0)}  # fmt: skip
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWTIME = 0x08000000, 0x10000000, 0x80
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET; and for unshare CLONE_NEWTIME, which for
# clone is a bit of the exit signal (CSIGNAL) and which clone3 alone takes (ENOSYS here)
NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | CLONE_NEWIPC | CLONE_NEWUSER | 0x20000000 | 0x40000000
)
# Calls denied by their flags (args[0]): name -> ((x86_64 number, aarch64 number), the flags denied).
FLAGGED = {"clone": ((56, 220), NAMESPACE_FLAGS),
           "unshare": ((272, 97), (NAMESPACE_FLAGS | CLONE_NEWTIME) & ~CLONE_NEWIPC)}  # fmt: skip
# Calls denied by the socket family they ask for (args[0]), and the families they may still have: AF_UNIX,
# AF_INET, AF_INET6 (a program's own networking code, bounded by the worker's empty network namespace) and
# AF_NETLINK, of that only NETLINK_ROUTE (args[2]): glibc's getaddrinfo and getifaddrs read the worker's
# routing tables through it. Others reach past the namespace: NETLINK_KOBJECT_UEVENT delivered the host's
# device and module events (any program's socket(AF_X) loading a module told every other run).
SOCKET_CALLS = {"socket": (41, 198), "socketpair": (53, 199)}
SOCKET_FAMILIES = (1, 2, 10)
AF_NETLINK, NETLINK_ROUTE = 16, 0
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_EPERM, _ENOSYS, _EPROTONOSUPPORT, _EAFNOSUPPORT = 1, 38, 93, 97
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2

ENABLED = False  # set by `probe`: the filter was set and checked in a child
INSTALLED = False  # this process is under the filter (inherited by a fork, as the filter is)
_libc = ctypes.CDLL(None, use_errno=True)
_program: tuple[ctypes.Array, bytes] | None = None  # the filter and its sock_fprog, kept alive once built


def assemble(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter for `machine` as BPF instructions (code, jump if true, jump if false, k)."""
    column = 0 if machine == "x86_64" else 1
    deny = [nrs[column] for nrs in DENIED.values() if nrs[column] is not None]
    absent = [nrs[column] for nrs in ABSENT.values()]
    code: list = [
        (_LD, 0, 0, 4), (_JEQ, 0, "kill", AUDIT_ARCH[machine]),  # seccomp_data.arch
        (_LD, 0, 0, 0), (_JGE, "eperm", 0, 0x40000000),  # .nr; x32's calls have bit 30 set
        *[(_JEQ, name, 0, nrs[column]) for name, (nrs, _) in FLAGGED.items()],
        *[(_JEQ, "socket", 0, nrs[column]) for nrs in SOCKET_CALLS.values()],
        *[(_JEQ, "eperm", 0, nr) for nr in deny], *[(_JEQ, "enosys", 0, nr) for nr in absent],
        (_RET, 0, 0, _RET_ALLOW),
    ]  # fmt: skip
    for name, (_, flags) in FLAGGED.items():  # seccomp_data.args[0], its low half
        code += [name, (_LD, 0, 0, 16), (_JSET, "eperm", 0, flags), (_RET, 0, 0, _RET_ALLOW)]
    code += ["socket", (_LD, 0, 0, 16), *[(_JEQ, "family", 0, family) for family in SOCKET_FAMILIES],
             (_JEQ, "netlink", 0, AF_NETLINK), (_RET, 0, 0, _RET_ERRNO | _EAFNOSUPPORT),
             "netlink", (_LD, 0, 0, 32), (_JEQ, "family", 0, NETLINK_ROUTE),  # .args[2], the protocol
             (_RET, 0, 0, _RET_ERRNO | _EPROTONOSUPPORT), "family", (_RET, 0, 0, _RET_ALLOW)]  # fmt: skip
    code += ["eperm", (_RET, 0, 0, _RET_ERRNO | _EPERM), "enosys", (_RET, 0, 0, _RET_ERRNO | _ENOSYS),
             "kill", (_RET, 0, 0, _RET_KILL_PROCESS)]  # fmt: skip
    labels, program = {}, []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(program)
        else:
            program.append(item)

    def offset(target: int | str, at: int) -> int:
        jump = target if isinstance(target, int) else labels[target] - at - 1
        if not 0 <= jump <= 255:
            raise ValueError(f"seccomp filter: a jump of {jump} from instruction {at}")
        return jump

    return [(c, offset(jt, i), offset(jf, i), k) for i, (c, jt, jf, k) in enumerate(program)]


def install() -> None:
    """Set the filter on this process and everything it starts, once (no_new_privs first, which the kernel
    asks of an unprivileged caller). Raises OSError when the kernel refuses."""
    global _program, INSTALLED
    if INSTALLED:
        return
    if _program is None:
        machine = os.uname().machine
        if machine not in AUDIT_ARCH:
            raise OSError(0, f"no seccomp filter for {machine}")
        program = assemble(machine)
        filt = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *ins) for ins in program))
        _program = filt, struct.pack("HxxxxxxQ", len(program), ctypes.addressof(filt))
    _prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1))
    _prctl(_PR_SET_SECCOMP, ctypes.c_ulong(_SECCOMP_MODE_FILTER), ctypes.c_char_p(_program[1]))
    INSTALLED = True


def _prctl(option: int, *args) -> None:
    """prctl with every further argument an unsigned long (zero where not given), as the kernel reads them."""
    args = (*args, *(ctypes.c_ulong(0),) * (4 - len(args)))
    if _libc.prctl(option, *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def probe() -> str:
    """Set the filter in a child and check that it works there: unshare(CLONE_NEWUSER) must fail with
    EPERM. "" when it does, else why not. Sets ENABLED."""
    global ENABLED
    ENABLED = False
    if os.uname().machine not in AUDIT_ARCH:
        return f"none for {os.uname().machine}"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            install()
            code = 0 if _libc.unshare(CLONE_NEWUSER) == -1 and ctypes.get_errno() == _EPERM else 2
        except BaseException:
            pass
        os._exit(code)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    ENABLED = status == 0
    return {0: "", 2: "the kernel took the filter but did not apply it"}.get(
        status, f"the kernel refused a seccomp filter (exit {status})"
    )
