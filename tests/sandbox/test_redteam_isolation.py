"""Red-team suite, part 2: host secrets, writing outside the work dir, network, attacks on the sandbox's
own processes, and plain I/O (helpers in redteam_kit.py)."""

from __future__ import annotations

import os
import re
import secrets
import select
import signal
import socket
import sys
import sysconfig
import textwrap
import time

import pytest
from redteam_kit import (
    FAST,
    ONE_UID,
    _descendants,
    _kill_marked,
    _proc_table,
    assert_contained,
    assert_healthy,
    brief,
    host_ipv4_addresses,
    needs_namespaces,
    run,
    src,
    wait_no_strays,
)

from codefoundry.sandbox import (
    Limits,
    Status,
    execute,
    shutdown,
)


# -- secrets on the host ----------------------------------------------------------------------------------------
def test_read_etc_shadow():
    try:
        with open("/etc/shadow") as f:
            host_lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except PermissionError:  # not root: the caller cannot read it either; the run still must not
        host_lines = []
    r = run("print(open('/etc/shadow').read())\n")
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    for line in host_lines:
        assert line not in r.stdout, brief(r)


def test_read_parent_environment(monkeypatch):
    secret = "cfrt-env-" + secrets.token_hex(16)
    monkeypatch.setenv("CF_REDTEAM_SECRET", secret)
    shutdown()  # fresh workers, started with the secret in pytest's environment
    try:
        prog = src("""
            import os, sys
            key = 'CF_REDTEAM' + '_SECRET='
            blobs = {'os.environ': '\\n'.join(f'{k}={v}' for k, v in os.environ.items())}
            paths = ['/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ']
            try:
                paths += [f'/proc/{p}/environ' for p in os.listdir('/proc') if p.isdigit()]
            except OSError:
                pass
            for p in paths:
                try:
                    with open(p, 'rb') as f:
                        blobs[p] = f.read().replace(b'\\0', b'\\n').decode('utf-8', 'replace')
                except OSError as e:
                    blobs[p] = 'ERR ' + type(e).__name__
            for p, b in blobs.items():
                print('==', p)
                print(b)
            sys.exit(0 if any(key in b for b in blobs.values()) else 1)
        """)
        r = run(prog)
        assert secret not in r.stdout + r.stderr, brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        monkeypatch.delenv("CF_REDTEAM_SECRET")
        shutdown()  # do not leave workers holding the secret


def test_read_files_under_root_and_home():
    token = "CFRT-" + secrets.token_hex(16)
    tag = secrets.token_hex(6)
    made_dirs, made_files = [], []
    home = os.path.expanduser("~")  # the caller's own home: /root for root, wherever HOME points otherwise
    targets = dict.fromkeys([f"/root/.cf_redteam_{tag}", f"/root/.pyenv/.cf_redteam_{tag}",
                             os.path.join(home, f".cf_redteam_{tag}")])  # fmt: skip
    home_dir = f"/home/cf_redteam_{tag}"
    try:
        for path in targets:
            if os.access(os.path.dirname(path), os.W_OK):
                with open(path, "w") as f:
                    f.write(token)
                os.chmod(path, 0o644)  # world-readable on purpose: only the mount table may hide it
                made_files.append(path)
        if os.access("/home", os.W_OK):
            os.mkdir(home_dir, 0o755)
            made_dirs.append(home_dir)
            with open(f"{home_dir}/secret.txt", "w") as f:
                f.write(token)
            os.chmod(f"{home_dir}/secret.txt", 0o644)
            made_files.append(f"{home_dir}/secret.txt")
        prog = src("""
            import os, sys
            prefix = os.path.realpath(sys.prefix)
            found, budget = [], [400]
            def visit(d, depth):
                if depth > 3 or os.path.realpath(d) == prefix or budget[0] <= 0:
                    return
                try:
                    entries = sorted(os.listdir(d))[:200]
                except OSError as e:
                    print('LIST', d, type(e).__name__)
                    return
                print('LIST', d, entries)
                for e in entries:
                    p = os.path.join(d, e)
                    if os.path.islink(p):
                        continue
                    if os.path.isdir(p):
                        visit(p, depth + 1)
                    elif os.path.isfile(p) and budget[0] > 0:
                        budget[0] -= 1
                        try:
                            with open(p, 'rb') as f:
                                data = f.read(4096)
                        except OSError as ex:
                            print('READ', p, type(ex).__name__)
                            continue
                        print('READ', p, data[:120])
                        if b'CF' + b'RT-' in data:
                            found.append(p)
            for d in ('/root', '/home', HOME):
                visit(d, 0)
            sys.exit(0 if found else 1)
        """).replace("HOME", repr(home))
        assert made_files, "no home directory to plant a secret in"
        r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
        out = r.stdout + r.stderr
        assert token not in out, brief(r)
        assert f"cf_redteam_{tag}" not in out, brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        for path in made_files:
            os.unlink(path)
        for d in made_dirs:
            os.rmdir(d)


def test_proc_snooping():
    with open("/proc/1/cmdline", "rb") as f:
        host_init = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    prog = src("""
        import os, sys
        try:
            pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        except OSError as e:
            pids = []
            print('NO PROC', type(e).__name__)
        print('PIDS', pids)
        text = []
        for p in pids:
            try:
                with open(f'/proc/{p}/cmdline', 'rb') as f:
                    cmd = f.read().replace(b'\\0', b' ').decode('utf-8', 'replace')
            except OSError as e:
                cmd = 'ERR ' + type(e).__name__
            print('CMD', p, cmd)
            text.append(cmd)
        host = ['py' + 'test', 'process' + '_api', 'fire' + 'cracker', 'binary' + '_backend']
        leak = len(pids) > 8 or any(h in t for h in host for t in text)
        sys.exit(0 if leak else 1)
    """)
    r = run(prog)
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    m = re.search(r"PIDS \[([\d, ]*)\]", r.stdout)
    assert m, brief(r)
    pids = [int(x) for x in m.group(1).replace(",", " ").split()]
    assert os.getpid() not in pids, brief(r)
    assert len(pids) <= 8, brief(r)
    assert "pytest" not in r.stdout, brief(r)
    cmd1 = re.search(r"^CMD 1 (.*)$", r.stdout, re.M)
    if cmd1 and host_init:
        assert cmd1.group(1).strip() != host_init, brief(r)


def test_privileges_dropped():
    prog = src("""
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        bad = []
        if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()):
            bad.append('root ids')
        if 0 in os.getgroups():
            bad.append('root group')
        if libc.prctl(39, 0, 0, 0, 0) != 1:  # PR_GET_NO_NEW_PRIVS
            bad.append('no_new_privs off')
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()
        if libc.capget(header, data) != 0:
            bad.append('capget failed')
        caps = list(data)
        print('CAPS effective/permitted/inheritable', caps)
        if any(caps):
            bad.append('capabilities')
        for attempt in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setgroups([0])):
            try:
                attempt()
                bad.append('set id to 0')
            except OSError:
                pass
        print('BAD', bad)
        sys.exit(0 if bad else 1)
    """)
    r = run(prog)
    needs_namespaces(r)
    assert_contained(r, Status.FAILED)
    assert "BAD []" in r.stdout, brief(r)


def test_untrusted_text_is_parsed_by_an_unprivileged_helper_not_the_root_zygote():
    """A Python program that does not parse is caught before any fork, by the worker's parse helper: a
    child of the root zygote that runs under an unprivileged uid (as does the judge server)."""
    r = run("def f(:\n    pass\n")
    needs_namespaces(r, root_only=ONE_UID)
    assert r.status is Status.FAILED and r.phase == "compile" and r.cpu_seconds == 0
    table = _proc_table()
    zygotes = {pid for pid, (uid, _, _, cmd) in table.items() if b"zygote.py" in cmd and uid == 0}
    mine = _descendants(table, os.getpid())
    helpers = [(pid, uid) for pid, (uid, ppid, _, cmd) in table.items()
               if ppid in zygotes & mine and b"zygote.py" in cmd]  # fmt: skip
    unprivileged = [h for h in helpers if h[1] != 0]
    assert unprivileged, helpers  # the parse helper (the judge server starts with the first judged run)
    assert len(helpers) - len(unprivileged) <= 1, helpers  # root: only the template the programs fork from


# -- writing outside the work dir ---------------------------------------------------------------------------------
def test_write_outside_work_dir():
    mark = "cf_rt_" + secrets.token_hex(8)
    prefix = sys.prefix
    purelib = sysconfig.get_paths()["purelib"]
    protected = [
        f"/usr/{mark}", f"/usr/bin/{mark}", f"/etc/{mark}", f"/bin/{mark}", f"/opt/{mark}",
        f"{prefix}/{mark}", f"{prefix}/bin/{mark}", f"{purelib}/{mark}.pth", f"{purelib}/sitecustomize_{mark}.py",
    ]  # fmt: skip
    elsewhere = [
        f"/tmp/{mark}", f"/var/tmp/{mark}", f"/dev/shm/{mark}", f"/{mark}", f"/root/{mark}", f"/home/{mark}",
        f"/run/{mark}", f"/mnt/{mark}", f"/var/{mark}", f"/srv/{mark}", f"/dev/{mark}",
    ]  # fmt: skip
    prog = src(f"""
        import os, sys
        PROTECTED = {protected!r}
        targets = PROTECTED + {elsewhere!r}
        targets += [os.path.join(os.path.dirname(os.getcwd()), {mark!r}), os.path.join('..', {mark!r} + '_up')]
        wrote = []
        for p in targets:
            try:
                with open(p, 'w') as f:
                    f.write('pwned')
                wrote.append(p)
                print('WROTE', p)
            except OSError as e:
                print('DENIED', p, type(e).__name__)
            try:
                os.mkdir(p + '.d')
                wrote.append(p + '.d')
                print('WROTE', p + '.d')
            except OSError:
                pass
        sys.exit(0 if any(p in PROTECTED or p[:-2] in PROTECTED for p in wrote) else 1)
    """)
    r = run(prog)
    leaked = []
    for p in protected + elsewhere:
        for q in (p, p + ".d"):
            if os.path.lexists(q):
                leaked.append(q)
                if os.path.isdir(q):
                    os.rmdir(q)
                else:
                    os.unlink(q)
    for root in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/"):  # wherever the work dir's parent may be
        if os.path.isdir(root):
            leaked += [os.path.join(root, n) for n in os.listdir(root) if n.startswith(mark)]
    assert leaked == [], f"the program created files on the host: {leaked}\n{brief(r)}"
    needs_namespaces(r)
    for p in protected:
        assert f"WROTE {p}\n" not in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


def test_remount_read_only_binds_from_a_user_namespace():
    """unshare -Urm gives the program 'root' over its own mount namespace: the read-only binds must stay
    read-only there (they are locked), and nothing may reach the host."""
    mark = "cf_rt_userns_" + secrets.token_hex(6)
    prog = src(f"""
        import subprocess, sys
        ok = False
        for d in ('/usr', '/etc', sys.prefix):
            script = f'mount -o remount,rw,bind {{d}} 2>&1; mount -o remount,rw {{d}} 2>&1; touch {{d}}/{mark} && echo TOUCHED {{d}}'
            try:
                p = subprocess.run(['unshare', '-Urm', 'sh', '-c', script], capture_output=True, text=True, timeout=3)
                print(d, p.returncode, p.stdout, p.stderr)
                ok = ok or 'TOUCHED' in p.stdout
            except (OSError, subprocess.SubprocessError) as e:
                print(d, 'ERR', e)
        sys.exit(0 if ok else 1)
    """)
    r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256, processes=16))
    leaked = [p for p in (f"/usr/{mark}", f"/etc/{mark}", f"{sys.prefix}/{mark}") if os.path.exists(p)]
    for p in leaked:
        os.unlink(p)
    assert leaked == [], brief(r)
    needs_namespaces(r)
    assert "TOUCHED" not in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


def test_work_dir_symlinks_do_not_hurt_the_host():
    """Symlinks left in the work dir and /tmp must not lead the sandbox's clean-up to a host file."""
    canary = f"/tmp/cf_rt_canary_{secrets.token_hex(6)}"
    with open(canary, "w") as f:
        f.write("canary")
    os.chmod(canary, 0o600)
    st = os.stat(canary)
    try:
        prog = src(f"""
            import os, sys
            for d in ('.', '/tmp', os.environ.get('TMPDIR', '/tmp')):
                for i, target in enumerate(({canary!r}, '/tmp', '/etc/passwd', '/')):
                    try:
                        os.symlink(target, os.path.join(d, f'link{{i}}'))
                    except OSError:
                        pass
            sys.exit(1)
        """)
        r = run(prog)
        assert_contained(r, Status.FAILED)
        st2 = os.stat(canary)
        with open(canary) as f:
            assert f.read() == "canary"
        assert (st2.st_uid, st2.st_gid, st2.st_mode) == (st.st_uid, st.st_gid, st.st_mode)
        assert os.path.isdir("/tmp") and os.path.isfile("/etc/passwd")
    finally:
        os.unlink(canary)


def test_files_with_escaping_names_stay_in_the_work_dir():
    tag = secrets.token_hex(6)
    names = {f"/tmp/cf_rt_abs_{tag}": "x", f"../../../../tmp/cf_rt_rel_{tag}": "y"}
    for name, content in names.items():
        try:
            r = execute("print('ran')", files={name: content}, limits=FAST)
        except ValueError:
            r = None  # refused up front: fine
        if r is not None:
            assert r.status in (Status.OK, Status.FAILED, Status.SANDBOX_ERROR), brief(r)
    for path in (f"/tmp/cf_rt_abs_{tag}", f"/tmp/cf_rt_rel_{tag}"):
        assert not os.path.exists(path), path
    assert_healthy()


def test_work_dir_does_not_persist_between_runs():
    shutdown()  # one fresh worker, so that both runs below land on the same one
    mark = "cf_rt_persist_" + secrets.token_hex(6)
    writer = src(f"""
        import os
        dirs = [os.getcwd(), '/tmp', '/var/tmp', '/dev/shm', '/', '/run', '/dev', '/mnt',
                os.path.expanduser('~'), os.environ.get('TMPDIR', '/tmp'), os.path.dirname(os.getcwd())]
        for d in dirs:
            try:
                with open(os.path.join(d, {mark!r}), 'w') as f:
                    f.write('left behind')
                print('WROTE', d)
            except OSError as e:
                print('DENIED', d, type(e).__name__)
    """)
    reader = src(f"""
        import os, sys
        dirs = [os.getcwd(), '/tmp', '/var/tmp', '/dev/shm', '/', '/run', '/dev', '/mnt',
                os.path.expanduser('~'), os.environ.get('TMPDIR', '/tmp'), os.path.dirname(os.getcwd())]
        found = [d for d in dirs if os.path.exists(os.path.join(d, {mark!r}))]
        print('FOUND', found, 'CWD', sorted(os.listdir('.')))
        sys.exit(0 if found else 1)
    """)
    w = run(writer)
    assert w.passed, brief(w)
    assert "WROTE" in w.stdout, brief(w)
    r = run(reader)
    assert "FOUND []" in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)


# -- network ------------------------------------------------------------------------------------------------------
def test_connect_to_host_listener():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    hosts = host_ipv4_addresses() + ["localhost", "::1"]
    try:
        prog = src(f"""
            import socket, sys, time
            ok = []
            for host in {hosts!r}:
                t = time.monotonic()
                try:
                    s = socket.create_connection((host, {port}), timeout=2)
                    s.sendall(b'hello from the sandbox')
                    s.close()
                    ok.append(host)
                    print('CONNECTED', host)
                except OSError as e:
                    print('REFUSED', host, type(e).__name__, e, round(time.monotonic() - t, 3))
            sys.exit(0 if ok else 1)
        """)
        r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], f"the test's listener received a connection\n{brief(r)}"
        needs_namespaces(r)
        assert "CONNECTED" not in r.stdout, brief(r)
        assert_contained(r, Status.FAILED)
    finally:
        listener.close()


def test_connect_to_external_address_fails_fast():
    prog = src("""
        import socket, sys, time
        ok = []
        def attempt(name, fn):
            t = time.monotonic()
            try:
                fn()
                ok.append(name)
                print('REACHED', name)
            except OSError as e:
                print('BLOCKED', name, type(e).__name__, round(time.monotonic() - t, 3))
        def tcp():
            socket.create_connection(('1.1.1.1', 53), timeout=3).close()
        def udp():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\\x00\\x01', ('8.8.8.8', 53))
                s.recvfrom(512)
        def dns():
            socket.getaddrinfo('example.com', 80)
        for name, fn in (('tcp 1.1.1.1:53', tcp), ('udp 8.8.8.8:53', udp), ('dns example.com', dns)):
            attempt(name, fn)
        sys.exit(0 if ok else 1)
    """)
    r = run(prog, limits=Limits(cpu_seconds=2, memory_mb=256))
    needs_namespaces(r)
    assert "REACHED" not in r.stdout, brief(r)
    assert_contained(r, Status.FAILED)
    assert r.wall_seconds < 2.0, f"network attempts did not fail fast\n{brief(r)}"


def test_connect_to_host_abstract_unix_socket():
    name = "\0cf_redteam_" + secrets.token_hex(8)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(4)
    try:
        prog = src(f"""
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect({name!r})
            print('CONNECTED')
        """)
        r = run(prog)
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        listener.close()


def test_connect_to_host_unix_socket_file():
    path = f"/tmp/cf_rt_{secrets.token_hex(6)}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(4)
    try:
        r = run(
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.settimeout(2)\ns.connect({path!r})\nprint('CONNECTED')\n"
        )
        readable, _, _ = select.select([listener], [], [], 0)
        assert readable == [], brief(r)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
    finally:
        listener.close()
        os.unlink(path)


# -- attacking the sandbox's own processes ------------------------------------------------------------------------
KILL_ATTACKS = {
    "parent": "os.kill(os.getppid(), 9)",
    "pid1": "os.kill(1, 9)",
    "minus_one": "os.kill(-1, 9)",
    "every_pid": (
        "try:\n"
        "    pids = {int(p) for p in os.listdir('/proc') if p.isdigit()}\n"
        "except OSError:\n"
        "    pids = set()\n"
        "for p in sorted(pids | set(range(1, 4096))):\n"
        "    if p != os.getpid():\n"
        "        try:\n"
        "            os.kill(p, 9)\n"
        "        except OSError:\n"
        "            pass"
    ),
    "killpg_own_group": "os.killpg(os.getpgrp(), 9)",
    "killpg_zero": "os.killpg(0, 9)",
    "setsid_then_kill_minus_one": "os.setsid()\nos.kill(-1, 9)",
}


def _sandbox_side_processes() -> set[int]:
    """The live processes that pytest started (the sandbox's workers and their helpers)."""
    table = _proc_table()
    return {p for p in _descendants(table, os.getpid()) if table[p][2] != "Z"}


@pytest.mark.parametrize("attack", list(KILL_ATTACKS), ids=list(KILL_ATTACKS))
def test_kill_the_supervisor(attack):
    """The program tries to kill whatever supervises it. Whatever the kill call returns, the run must still be
    supervised to its end (its real exit status reported, or its own death by SIGKILL when it hit its own
    process group), no sandbox process may die, and the next run must be served normally."""
    assert_healthy()  # a warm worker exists now
    before = _sandbox_side_processes()
    body = textwrap.indent(KILL_ATTACKS[attack], "    ")
    prog = f"import os, sys, time\ntry:\n{body}\nexcept OSError as e:\n    print('denied', e)\n"
    prog += "time.sleep(0.3)\nprint('still here', flush=True)\nsys.exit(1)\n"
    r = run(prog)
    needs_namespaces(r)
    assert_contained(r, Status.FAILED, Status.KILLED)
    if r.status == Status.FAILED:
        assert r.exit_code == 1 and "still here" in r.stdout, brief(r)
    else:
        assert r.signal == signal.SIGKILL, brief(r)
    time.sleep(0.2)
    dead = sorted(p for p in before if not os.path.exists(f"/proc/{p}"))
    assert dead == [], f"sandbox processes died: {dead}\n{brief(r)}"
    assert_healthy()


def test_setsid_double_fork_daemon_dies_with_the_run():
    mark = "cf-redteam-daemon-" + secrets.token_hex(8)
    prog = src(f"""
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                code = 'import time; time.sleep(30); print("late daemon output", flush=True)'
                os.execv(sys.executable, [sys.executable, '-c', code, {mark!r}])
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.3)
        print('parent done', flush=True)
        sys.exit(1)
    """)
    before = set(_proc_table())
    limits = Limits(cpu_seconds=2, memory_mb=256)
    try:
        r = run(prog, limits=limits)
        needs_namespaces(r)
        assert_contained(r, Status.FAILED)
        assert r.exit_code == 1, brief(r)
        assert "parent done" in r.stdout, brief(r)
        assert "late daemon output" not in r.stdout, brief(r)
        assert r.wall_seconds < limits.wall - 1.0, f"the run waited for the daemon\n{brief(r)}"
        assert wait_no_strays(before, mark.encode()) == []
    finally:
        _kill_marked(mark.encode())
