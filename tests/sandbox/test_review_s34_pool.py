"""Session 34's review of the pool and the executors, as a user running millions of samples: workers that
die from outside (killed, or by a Ctrl-C at the terminal), an interrupted Ray batch, and the warning that
says isolation is weaker, whichever executor ran the programs. One property per test, on the real
sandbox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import codefoundry
from codefoundry.sandbox import Limits, Status, api, execute, execute_many, shutdown
from codefoundry.sandbox.worker import Worker, WorkerDied

SRC = os.path.dirname(os.path.dirname(codefoundry.__file__))  # where this codefoundry was imported from


def _wait_dead(pid: int) -> None:
    """Block until `pid`, a child of ours, has ended, leaving it for its owner to reap."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def _gone(pid: int) -> bool:
    """No such process, or a zombie (its parent, maybe the host's init, has yet to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _python(script: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    # A session of its own: a test signals the script's whole process group, never pytest's.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, start_new_session=True)  # fmt: skip


# -- workers that die from outside ----------------------------------------------------------------------------
def test_a_warm_worker_killed_while_idle_does_not_fail_the_next_program():
    # A warm worker that died between runs (the OOM killer, a stray kill, a Ctrl-C at the terminal, which
    # reaches the workers too) was handed the next program, which came back `sandbox_error` although it
    # never ran: "cannot write to the sandbox worker: Broken pipe".
    shutdown()
    assert execute("print(1)").status is Status.OK
    (worker,) = api._default_pool()._all
    os.kill(worker.proc.pid, signal.SIGKILL)
    _wait_dead(worker.proc.pid)
    r = execute("print(2)")
    assert (r.status, r.stdout) == (Status.OK, "2\n"), r.message


def test_a_worker_killed_mid_batch_fails_only_its_program_and_the_pool_recovers():
    shutdown()
    execute("print(0)")
    (worker,) = api._default_pool()._all
    threading.Timer(1.0, os.kill, (worker.proc.pid, signal.SIGKILL)).start()
    programs = ["import time; time.sleep(5); print('slow')"] + [f"print({i})" for i in range(1, 4)]
    results = execute_many(programs, workers=1, progress=False)
    assert results[0].status is Status.SANDBOX_ERROR and not results[0].passed
    assert [r.stdout for r in results[1:]] == ["1\n", "2\n", "3\n"]
    assert not worker.alive and worker not in api._default_pool()._all


def test_a_ctrl_c_at_the_terminal_leaves_the_next_batch_unharmed():
    # Ctrl-C at a terminal signals the whole foreground process group, the warm workers included: a caller
    # that caught the KeyboardInterrupt (an RL loop interrupted while generating, saving its state) had its
    # next batch come back with a sandbox_error for each worker that had been waiting for work.
    out = _python("""
        import os, signal, time
        from codefoundry.sandbox import execute_many
        execute_many(["print(0)"] * 2, workers=2, progress=False)  # two warm workers, now idle
        try:
            os.killpg(0, signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            time.sleep(0.5)  # saving a checkpoint
        results = execute_many([f"print({i})" for i in range(4)], workers=2, progress=False)
        print([r.status.value for r in results])
    """, timeout=60)  # fmt: skip
    assert out.stdout.strip().splitlines()[-1:] == [str(["ok"] * 4)], (out.stdout, out.stderr[-2000:])


def test_a_program_outlives_no_worker_killed_under_it_at_the_process_level(monkeypatch, tmp_path):
    # At the process level no PID namespace ends a run with its worker: a worker killed mid-run (or one
    # `Pool` gives up on after an interrupt, which it kills after 5 s) left the program running, adopted
    # by init, until it ended by itself (a sleeping program: as long as it slept).
    monkeypatch.setenv("CODEFOUNDRY_SANDBOX_ISOLATION", "process")
    worker = Worker()
    pid_file = tmp_path / "pid"  # at the process level a program sees the host's files
    program = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    died: list = []

    def run() -> None:
        try:
            worker.run(program, language="python", stdin=None, files=None, limits=Limits(), judge=None)
        except WorkerDied as e:
            died.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    os.kill(worker.proc.pid, signal.SIGKILL)
    runner.join(30)
    worker.close()
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert died and _gone(pid), f"program {pid} still runs after its worker was killed"
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)  # the program this test started


# -- the Ray executor -----------------------------------------------------------------------------------------
def test_the_ray_executor_warns_once_of_weaker_isolation():
    # The warning is printed by the worker that finds the level weaker, which under Ray is a Ray worker
    # whose output is not shown (log_to_driver=False): the caller was never told.
    pytest.importorskip("ray")
    out = _python("""
        from codefoundry.sandbox import execute_many
        results = execute_many(["print(1)", "print(2)"], workers=2, executor="ray", progress=False)
        print([r.isolation.value for r in results])
    """, env={"CODEFOUNDRY_SANDBOX_ISOLATION": "process"})  # fmt: skip
    assert out.stdout.strip().splitlines()[-1:] == [str(["process"] * 2)], (out.stdout, out.stderr[-2000:])
    assert out.stderr.count("codefoundry.sandbox: weaker isolation") == 1, out.stderr[-2000:]


def test_an_interrupted_ray_batch_leaves_no_task_running():
    # A KeyboardInterrupt in `execute_many(..., executor="ray")` left every batch already submitted
    # running on Ray to its end (here ~30 s of both CPUs; on a cluster, hours of a big run).
    import _thread

    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        threading.Timer(4.0, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            execute_many(["import time; time.sleep(1)"] * 64, workers=2, executor="ray", progress=False)
        deadline = time.monotonic() + 15
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == 2, "batches still run after the interrupt"
    finally:
        ray.shutdown()
