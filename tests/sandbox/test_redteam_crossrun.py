"""Red-team suite, part 3: what one run can leave for, or take from, the runs after it on the same worker:
processes and memory (files, devices, IPC and keyrings are in test_redteam_crossrun_files.py).

The zygote's docstring says that nothing outlives a run (its PID namespace is emptied or killed, and
children a program made with CLONE_PARENT are reaped by the zygote) and that each run's process starts
from a pristine copy of the template. Each test here runs an attacking program and then, on the same
worker, a second program that looks for what the first one left (an earlier request in the template's
memory, a process, interpreter state) or a correct program whose verdict the first one tries to change;
it asserts that nothing got through.

Every test that needs consecutive runs on one worker uses the `one_worker` fixture (conftest.py,
crossrun_kit.py): the pool is reset so that sequential `execute` / `execute_many(workers=1)` calls land on
a single fresh worker, and afterwards that worker is killed outright so that no process outlives the test.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time

from crossrun_kit import CLONE_PARENT, reversed_token, worker_children, zygotes
from redteam_kit import (
    FAST,
    assert_contained,
    assert_healthy,
    brief,
    needs_namespaces,
    run,
    src,
)

from codefoundry.sandbox import Status, execute, execute_many
from codefoundry.sandbox.api import Program


# -- the template's memory: earlier runs' requests -----------------------------------------------------------
def test_first_run_request_is_not_visible_to_later_runs(one_worker):
    """Each run's process is a clone of the template, itself forked from the zygote in the middle of serving
    the worker's first run: the frames above the program's own still hold that run's request (program,
    stdin, files). A later program must not be able to read another run's inputs."""
    token = "cfrt-first-" + secrets.token_hex(8)
    first = execute(
        f"# {token} source\nprint('first')\n",
        stdin=f"{token} stdin",
        files={"data.txt": f"{token} file"},
        limits=FAST,
    )
    needs_namespaces(first)
    assert first.passed, brief(first)
    snoop = src(f"""
        import re, sys
        token = {reversed_token(token)!r}[::-1]
        seen = set()
        f = sys._getframe().f_back  # the frames above the program's own
        while f is not None:
            for name, value in f.f_locals.items():
                req = getattr(value, 'req', None)
                text = repr(req) if isinstance(req, dict) else repr(value)
                for hexed in re.findall(r'[0-9a-f]{{16,}}', text):  # stdin and files travel in hex
                    try:
                        text += bytes.fromhex(hexed).decode('latin-1')
                    except ValueError:
                        pass
                for kind in ('source', 'stdin', 'file'):
                    if f'{{token}} {{kind}}' in text:
                        seen.add(f'{{f.f_code.co_name}}.{{name}}: {{kind}}')
            f = f.f_back
        print('SEEN', sorted(seen))
        sys.exit(0 if seen else 1)
    """)
    r = execute(snoop, limits=FAST)
    assert "SEEN" in r.stdout, brief(r)
    assert token not in r.stdout.replace(reversed_token(token), ""), brief(r)
    assert_contained(r, Status.FAILED)


HEAP_SCAN = src("""
    import ctypes, os, sys
    needles = [n[::-1].encode() for n in NEEDLES]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    libc.write.restype = ctypes.c_ssize_t
    r, w = os.pipe()
    chunk, scanned, found = 1 << 16, 0, set()
    addr = libc.sbrk(0) - chunk
    while scanned < (512 << 20):  # down from the heap's top; write() says EFAULT where it ends
        n = libc.write(w, addr, chunk)
        if n <= 0:
            break
        data = os.read(r, n)
        scanned += n
        found |= {i for i, needle in enumerate(needles) if needle in data}
        if n < chunk:
            break
        addr -= chunk - 256  # overlapping windows: a needle across a boundary is still found
    print('SCANNED_KB', scanned >> 10, 'FOUND', sorted(found))
    sys.exit(0 if found else 1)
""")


def test_previous_run_request_is_not_in_freed_template_memory(one_worker):
    """The template receives every run's request (program, stdin, files) before cloning its process; the
    copies it frees stay in its heap, which the next run's process inherits. A program that reads its own
    heap must not find the previous run's source or stdin."""
    token = "cfrt-heap-" + secrets.token_hex(8)
    stdin = f"{token} stdin " * 40
    needles = [token + " source", (token + " stdin").encode().hex()]
    scan = HEAP_SCAN.replace("NEEDLES", repr([reversed_token(n) for n in needles]))
    programs = [
        Program("print('warm-up run: the template now exists')\n"),
        Program(f"import sys\nsys.stdin.read()\n# {token} source\n", stdin=stdin),
        Program(scan),
    ]
    warm, victim, r = execute_many(programs, workers=1, limits=FAST, progress=False)
    needs_namespaces(warm)
    assert victim.passed, brief(victim)
    assert "SCANNED_KB" in r.stdout, brief(r)
    assert "FOUND []" in r.stdout, f"the previous run's request is in this run's memory\n{brief(r)}"
    assert_contained(r, Status.FAILED)


# -- processes that leave the run through clone(CLONE_PARENT) ------------------------------------------------
def test_clone_parent_daemon_does_not_outlive_its_run(one_worker):
    """A child made with CLONE_PARENT is the zygote's child, not the run init's: the zygote, which decides
    whether to reuse the run's PID namespace from init's children alone, must still see it and end it. Here
    it serves a secret on an abstract Unix socket (the network namespace is the worker's) to later runs."""
    token = "cfrt-daemon-" + secrets.token_hex(8)
    name = "\0cf_rt_xrun_" + secrets.token_hex(6)
    daemon = CLONE_PARENT + src(f"""
        import socket, time
        ready_r, ready_w = os.pipe()
        if clone_parent() == 0:
            for fd in range(1024):
                if fd != ready_w:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind({name!r})
            s.listen(8)
            os.write(ready_w, b'!')
            os.close(ready_w)
            s.settimeout(10)
            try:
                while True:
                    c, _ = s.accept()
                    c.sendall({reversed_token(token)!r}[::-1].encode())
                    c.close()
            finally:
                os._exit(0)
        os.close(ready_w)
        print('daemon ready' if os.read(ready_r, 1) else 'no daemon')
    """)
    reader = src(f"""
        import socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect({name!r})
        except OSError as e:
            print('nobody there:', e)
            sys.exit(1)
        print('GOT', s.recv(200).decode())
    """)
    first = execute(daemon, limits=FAST)
    needs_namespaces(first)
    assert "daemon ready" in first.stdout, brief(first)
    for _ in range(2):
        r = execute(reader, limits=FAST)
        assert token not in r.stdout, f"a process of the previous run is still serving\n{brief(r)}"
        assert_contained(r, Status.FAILED)


def test_clone_parent_daemon_cannot_kill_later_runs(one_worker):
    """A process left in the run's PID namespace shares the next runs' uid and namespace: it can signal
    their programs. A correct program after it must still pass."""
    killer = CLONE_PARENT + src("""
        import time
        if clone_parent() == 0:
            os.closerange(0, 1024)
            me, end = os.getpid(), time.monotonic() + 4
            while time.monotonic() < end:
                for pid in range(me + 1, me + 40):
                    try:
                        os.kill(pid, 9)
                    except OSError:
                        pass
                time.sleep(0.001)
            os._exit(0)
        print('left a killer behind')
    """)
    first = execute(killer, limits=FAST)
    needs_namespaces(first)
    assert first.passed, brief(first)
    time.sleep(0.05)
    for _ in range(3):
        r = execute("import time\ntime.sleep(0.05)\nprint(6 * 7)\n", limits=FAST)
        assert r.passed and r.stdout == "42\n", f"a correct program after the attack failed\n{brief(r)}"


def test_clone_parent_zombies_do_not_use_up_later_runs_processes(one_worker):
    """Children made with CLONE_PARENT that exit at once are zombies of the zygote, which only ever waits
    for the pids it knows: if nobody reaps them they count against the worker uid's RLIMIT_NPROC in every
    later run. A later correct program that forks must still pass."""
    prog = CLONE_PARENT + src(f"""
        made = 0
        for _ in range({FAST.processes}):
            pid = clone_parent()
            if pid == 0:
                os._exit(0)
            made += pid > 0
        print('MADE', made)
    """)
    forker = src("""
        import os
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        print('forked', len(pids))
    """)
    first = execute(prog, limits=FAST)
    needs_namespaces(first)
    assert "MADE" in first.stdout, brief(first)
    for _ in range(2):
        r = execute(forker, limits=FAST)
        assert r.passed and "forked 3" in r.stdout, (
            f"a correct forking program failed\n{brief(r)}\n{brief(first)}"
        )


def test_clone_parent_zombie_does_not_hang_the_worker(one_worker):
    """A CLONE_PARENT child that exits (a zombie of the zygote, in the run's PID namespace) plus an ordinary
    orphan (so the namespace's init is killed): the kernel lets a namespace's init finish dying only once
    every process of the namespace is reaped, so the zygote must not wait for init while a zombie nobody
    reaps is left. The run must end with a verdict, never as a sandbox error, and the worker must serve the
    next run. (A watchdog kills a worker that hangs, so that the test does not wait out the pool's grace.)"""
    prog = CLONE_PARENT + src("""
        import time
        if clone_parent() == 0:
            os._exit(0)
        if os.fork() == 0:
            os.closerange(0, 1024)
            time.sleep(10)
            os._exit(0)
        print('left a zombie and an orphan')
    """)
    assert_healthy()  # the worker is up: the watchdog below measures the attack's run only
    hung: list[int] = []

    def watchdog() -> None:
        for pid in zygotes():
            hung.append(pid)
            os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(1.5, watchdog)  # the run itself takes ~0.1 s
    timer.start()
    try:
        r = execute(prog, limits=FAST)
    finally:
        timer.cancel()
    assert not hung, f"the worker hung after the run and was killed\n{brief(r)}"
    assert r.status != Status.SANDBOX_ERROR, brief(r)
    needs_namespaces(r)
    assert r.passed and "left a zombie" in r.stdout, brief(r)
    assert_healthy()


def _worker_processes() -> set[int]:
    """The long-lived Python children of this test's one worker (template, judge, parse helper)."""
    assert len(zygotes()) == 1
    return {pid for pid, (_, _, _, cmd) in worker_children().items() if b"python" in cmd}


def test_signals_to_its_process_group_reach_no_worker_process(one_worker):
    """No PID namespace bounds a process group. A program left in the zygote's group reached the parse
    helper, which runs under the programs' uid, with kill(0, ...): SIGSTOP stalled the next run for 5 s,
    SIGKILL killed the helper. Each program leads a session and group of its own."""
    first = execute("import os\nprint(os.getpgid(0) == os.getsid(0) == os.getpid())\n", limits=FAST)
    assert first.passed and first.stdout == "True\n", brief(first)
    helpers = _worker_processes()
    r = execute("import os, signal\nos.kill(0, signal.SIGKILL)\n", limits=FAST)
    assert_contained(r, Status.KILLED)
    after = execute("print(6 * 7)\n", limits=FAST)
    assert after.passed and after.stdout == "42\n", brief(after)
    assert _worker_processes() == helpers, "a worker process was killed and replaced"


def test_no_descriptors_beyond_the_standard_three():
    """An unjudged run holds fds 0-2 only: nothing of the template, the zygote, the judge or the parse
    helper (their sockets, the cgroup, the host's /proc, pidfds)."""
    prog = src("""
        import fcntl, os, sys
        extra = []
        for fd in range(3, 1 << 12):
            try:
                fcntl.fcntl(fd, fcntl.F_GETFD)
            except OSError:
                continue
            extra.append(fd)
        print('EXTRA', extra)
        sys.exit(0 if extra else 1)
    """)
    r = run(prog)
    needs_namespaces(r)
    assert "EXTRA []" in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


# -- the warm interpreter: fresh in every run ----------------------------------------------------------------
def test_interpreter_state_does_not_carry_over(one_worker):
    """Every run's process must start from a pristine copy of the template: module globals, builtins,
    sys.modules, caches, sys.path, the environment, signal handlers and the preset streams changed by one
    run are as new in the next."""
    token = "cfrt-state-" + secrets.token_hex(6)
    poison = src(f"""
        import builtins, functools, math, os, re, signal, sys, atexit, typing, collections
        T = {reversed_token(token)!r}[::-1]
        builtins.print = lambda *a, **k: sys.__stdout__.write(T + '\\n')
        builtins.cfrt = T
        math.pi = 3
        re._cache.clear(); re.compile('x'); re._cache[(str, 'x', 0)] = T
        functools.cfrt = T
        sys.modules['cfrt_planted'] = type(sys)('cfrt_planted')
        sys.modules['json'] = T
        sys.path.insert(0, '/tmp/' + T)
        sys.path_importer_cache['/tmp/' + T] = None
        os.environ['CFRT'] = T
        os.putenv('CFRT_PUT', T)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        atexit.register(lambda: sys.__stdout__.write(T))
        sys.argv.append(T)
        sys.__stdout__.cfrt = T
        sys.setrecursionlimit(77)
        collections.Counter.most_common = lambda self, n=None: T
        typing.cfrt = T
        sys.modules['__main__'].cfrt_main = T
        print('poisoned')
    """)
    check = src("""
        import builtins, functools, math, os, re, signal, sys, typing, collections
        seen = [
            hasattr(builtins, 'cfrt'), math.pi != 3.141592653589793, hasattr(functools, 'cfrt'),
            'cfrt_planted' in sys.modules, isinstance(sys.modules.get('json', None), str),
            any('cfrt' in p for p in sys.path), any('cfrt' in str(p) for p in sys.path_importer_cache),
            'CFRT' in os.environ or 'CFRT_PUT' in os.environ, signal.getsignal(signal.SIGTERM) != signal.SIG_DFL,
            sys.argv != ['main.py'], hasattr(sys.__stdout__, 'cfrt'), sys.getrecursionlimit() == 77,
            collections.Counter('aab').most_common(1) != [('a', 2)], hasattr(typing, 'cfrt'),
            any('cfrt' in str(v) for v in re._cache.values()), 'cfrt_main' in vars(sys.modules['__main__']),
        ]
        print('SEEN', [i for i, s in enumerate(seen) if s])
        sys.exit(1 if any(seen) else 0)
    """)
    p, c = execute_many([poison, check], workers=1, limits=FAST, progress=False)
    needs_namespaces(p)
    assert token in p.stdout, brief(p)
    assert c.passed and "SEEN []" in c.stdout, brief(c)
    assert token not in c.stdout + c.stderr, brief(c)


def test_sandbox_still_healthy_after_the_crossrun_attacks():
    assert_healthy()
