"""The workers' cgroups (cgroup.py): a run's CPU time is one budget for all its processes where a cgroup
counts it, a build's CPU time is never charged to the run (at every level), and the cgroups of killed
workers do not pile up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redteam_kit import brief, src

from codefoundry.sandbox import Limits, Status, cgroup, execute

GXX = shutil.which("g++")

# Building this takes most of a CPU second (the whole standard library's headers); running it, about 0.2 s.
HEAVY_BUILD = src("""
    #include <bits/stdc++.h>
    int main() {
        std::clock_t start = std::clock();
        volatile long n = 0;
        while (std::clock() - start < CLOCKS_PER_SEC / 5) n++;
        std::cout << "ran" << std::endl;
    }
""")

# A grandchild spinning for 0.4 s, orphaned to the run's init: the program never waits for it, it only
# reads the grandchild's word that it is done.
ORPHAN = src("""
    import os, time
    r, w = os.pipe()
    if os.fork() == 0:
        if os.fork() == 0:
            start = time.process_time()
            while time.process_time() - start < 0.4:
                pass
            os.write(w, b"done")
        os._exit(0)
    os.close(w)
    os.read(r, 4)
""")


@pytest.mark.skipif(GXX is None, reason="needs g++")
def test_a_build_is_not_charged_to_the_runs_cpu_limit():
    """The build has its own limit (`compile_seconds`). It used to be added to the program's CPU time, so
    a C++ program running for 0.2 s under a 0.5 s limit was a timeout whenever its build took 0.3 s."""
    r = execute(HEAVY_BUILD, language="cpp", limits=Limits(cpu_seconds=0.5))
    assert r.status is Status.OK, brief(r)
    assert 0.15 <= r.cpu_seconds < 0.5 and r.wall_seconds < 1.5, brief(r)


@pytest.mark.skipif(GXX is None, reason="needs g++")
def test_the_wall_clock_backstop_starts_after_the_build():
    """The build has a backstop of its own (`Limits.build_wall`); the program's starts when the build has
    ended. It used to count the build too: this program, sleeping 1.5 s of its 2.5 s, was a timeout
    whenever its build took a second."""
    slow = HEAVY_BUILD.replace("int main() {", "#include <unistd.h>\nint main() {\n    usleep(1500000);")
    r = execute(slow, language="cpp", limits=Limits(cpu_seconds=0.5, wall_seconds=2.5))
    assert r.status is Status.OK and r.stdout == "ran\n", brief(r)
    assert 1.5 <= r.wall_seconds < 2.5, brief(r)


@pytest.mark.skipif(GXX is None, reason="needs g++")
def test_a_build_is_not_charged_at_the_process_level_either():
    """Without namespaces (and so without the worker's cgroups), the build's CPU time, noted by the
    program's process before any untrusted code runs, is taken off what wait4 reports."""
    code = (
        "import sys\n"
        "from codefoundry.sandbox import execute, Limits\n"
        "r = execute(sys.stdin.read(), language='cpp', limits=Limits(cpu_seconds=0.5))\n"
        "print(r.isolation.value, r.status.value, r.cpu_seconds, r.extra.get('run_cpu_limit'))\n"
    )
    env = dict(os.environ, CODEFOUNDRY_SANDBOX_ISOLATION="process")
    out = subprocess.run([sys.executable, "-c", code], input=HEAVY_BUILD, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    level, status, cpu, counted = out.stdout.split()
    assert (level, status, counted) == ("process", "ok", "None"), out.stdout + out.stderr
    assert 0.15 <= float(cpu) < 0.5, out.stdout


def test_an_orphans_cpu_time_is_the_runs():
    """A child the program never waits for (orphaned to the run's init) is not in the program's own
    CPU time; where a cgroup counts the run, it is in the run's."""
    r = execute(ORPHAN, limits=Limits(cpu_seconds=2, wall_seconds=10))
    assert r.status is Status.OK, brief(r)
    if not r.extra.get("run_cpu_limit"):
        pytest.skip("no cgroup counts this worker's CPU time (limited per process)")
    assert 0.35 <= r.cpu_seconds <= 1.0, brief(r)


def test_sleeping_processes_use_no_cpu_budget():
    """Only CPU time counts: three children asleep for longer than the CPU limit do not make a timeout."""
    prog = src("""
        import os, time
        for _ in range(3):
            if os.fork() == 0:
                time.sleep(1.3)
                os._exit(0)
        for _ in range(3):
            os.wait()
        print("rested")
    """)
    r = execute(prog, limits=Limits(cpu_seconds=1, wall_seconds=10))
    assert r.status is Status.OK and r.stdout == "rested\n", brief(r)
    assert r.cpu_seconds < 0.5, brief(r)


def _v(version: int):
    return [b for b in cgroup.bases("cpuacct") if b[0] == version]


@pytest.mark.skipif(os.geteuid() != 0, reason="makes cgroups: needs root")
@pytest.mark.parametrize("version", [1, 2])
def test_a_cgroup_counts_the_cpu_time_of_processes_that_joined_it(monkeypatch, version):
    """cpuacct.usage (v1) and cpu.stat (v2, present without the cpu controller) each count a spinning
    child that joined the cgroup, and the cgroup is removed afterwards."""
    found = _v(version)
    if not found:
        pytest.skip(f"no cgroup v{version} hierarchy counting CPU time here")
    monkeypatch.setattr(cgroup, "bases", lambda controller: found if controller == "cpuacct" else [])
    groups = cgroup.create("cf-test-cpu")
    if groups is None:
        pytest.skip(f"cannot make a cgroup v{version} here")
    try:
        assert groups.memory is None and groups.cpu is not None and groups.cpu.version == version
        before = groups.cpu_seconds()
        pid = os.fork()
        if pid == 0:
            try:
                groups.join()
                start = time.process_time()
                while time.process_time() - start < 0.3:
                    pass
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert 0.28 <= groups.cpu_seconds() - before <= 0.6
    finally:
        groups.remove()
    assert not any(os.path.exists(p) for p in groups.paths)


@pytest.mark.skipif(os.geteuid() != 0, reason="makes cgroups: needs root")
def test_cgroups_of_a_killed_worker_are_removed_by_the_next():
    """A worker killed before it could remove its cgroups (a Ray worker's end kills its sandbox workers)
    leaves them behind; the next one made in this PID namespace removes those whose pid is gone, and no
    other."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            groups = cgroup.create("cf-test-sweep")
            os.write(w, "\n".join(groups.paths if groups else []).encode())
        finally:
            os._exit(0)  # killed, in effect: nothing removed
    os.close(w)
    left = [p for p in os.read(r, 65536).decode().split("\n") if p]
    os.close(r)
    os.waitpid(pid, 0)
    if not left:
        pytest.skip("cannot make cgroups here")
    assert all(os.path.isdir(p) for p in left)
    live = cgroup.create("cf-test-sweep")  # this process's own: sweeps the dead one's
    try:
        assert not any(os.path.exists(p) for p in left), left
        again = cgroup.create("cf-test-sweep")  # same pid, still alive: its namesake is kept
        assert again is None or all(os.path.isdir(p) for p in live.paths)
    finally:
        live.remove()


# Three processes spinning 0.6 s each; an orphan spinning 0.4 s the program never waits for; a daemon
# still spinning when the program, after 0.3 s of its own, ends.
_COUNTED = src("""
    import json, sys
    from codefoundry.sandbox import Limits, execute
    spread, orphan, daemon = sys.stdin.read().split("\\0")
    out = {}
    for name, prog, limit in (("spread", spread, 1), ("orphan", orphan, 2), ("daemon", daemon, 2)):
        r = execute(prog, limits=Limits(cpu_seconds=limit, wall_seconds=10))
        out[name] = [r.status.value, r.cpu_seconds, r.message, r.extra.get("run_cpu_limit")]
    print(json.dumps(out))
""")
DAEMON = src("""
    import os, time
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
    start = time.process_time()
    while time.process_time() - start < 0.3:
        pass
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="the namespaces level: needs root")
def test_without_a_cgroup_the_runs_pid_namespace_counts_its_cpu(tmp_path):
    """Where no cgroup counts CPU time (played by a copy of the package whose cgroups count none), the
    run's PID namespace does: every process there with the children it reaped, zombies included, and
    what the processes left behind had used before they are killed."""
    from redteam_kit import CPU_SPREAD

    package = Path(cgroup.__file__).parents[1]
    shutil.copytree(package, tmp_path / "codefoundry", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "codefoundry" / "sandbox" / "cgroup.py", "a") as f:
        f.write(
            "\n\n_create = create\n\n\n"
            "def create(prefix='codefoundry-worker'):  # the test's: memory only\n"
            "    groups = _create(prefix)\n"
            "    if groups is not None and groups.cpu is not None and groups.cpu is not groups.memory:\n"
            "        groups.cpu.remove()\n"
            "    return Cgroups(groups.memory, None) if groups is not None and groups.memory else None\n"
        )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _COUNTED], input="\0".join((CPU_SPREAD, ORPHAN, DAEMON)),
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert {v[3] for v in found.values()} == {"pid_namespace"}, found
    status, cpu, message, _ = found["spread"]
    assert status == "timeout" and "together" in message and 1.0 <= cpu <= 1.5, found
    status, cpu, _, _ = found["orphan"]
    assert status == "ok" and 0.35 <= cpu <= 1.0, found
    status, cpu, _, _ = found["daemon"]
    assert status == "ok" and 0.4 <= cpu <= 1.2, found  # the program's 0.3 s and the daemon's share
