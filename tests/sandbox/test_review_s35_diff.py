"""Review of session 35's sandbox changes: `Pool.stop_runs` and `_busy` with several calls sharing a pool, and
a Ctrl-C in `execute_many` before all its threads have started.

The pool runs fake workers here (no zygote): the races need steps held in a chosen order, which a real
worker's timing does not give."""

from __future__ import annotations

import signal
import threading

import pytest

from codefoundry.sandbox import Interrupted, Program, Status, api, execute_many
from codefoundry.sandbox.result import ExecutionResult, Isolation, Limits
from codefoundry.sandbox.worker import WorkerDied

LIMITS = Limits()


class FakeWorker:
    """A worker without a zygote. "block" runs until killed (or `release`); "gate" until `gate` is set;
    anything else ends at once, printing itself. Killed, a run in progress raises WorkerDied, as a real
    worker's read of its closed pipe does; killed is dead for `alive`, as Worker.kill makes it."""

    def __init__(self, cpu: int | None = None) -> None:
        self.cpu = cpu
        self.isolation = Isolation.NAMESPACES
        self.killed = threading.Event()
        self.running = threading.Event()
        self.release = threading.Event()
        self.gate = threading.Event()
        self.closed = False
        self.before_kill = None  # called by kill before the worker dies: a step held in between

    def run(self, source: str, **_: object) -> ExecutionResult:
        self.running.set()
        if source == "ctrl-c":  # the run is going when Ctrl-C reaches the caller's (main) thread
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            source = "block"
        if source == "block":
            while not (self.killed.wait(0.01) or self.release.is_set()):
                pass
        if source == "gate":
            self.gate.wait(10)
            return ExecutionResult(Status.OK, exit_code=0, stdout=source)
        self.running.clear()
        if self.killed.is_set():
            raise WorkerDied("the sandbox worker exited")
        return ExecutionResult(Status.OK, exit_code=0, stdout=source)

    def kill(self) -> None:
        if self.before_kill is not None:
            hook, self.before_kill = self.before_kill, None
            hook()
        self.killed.set()

    @property
    def alive(self) -> bool:
        return not self.killed.is_set() and not self.closed

    def close(self) -> None:
        self.closed = True


class FakePool(api.Pool):
    def __init__(self) -> None:
        super().__init__()
        self.made: list[FakeWorker] = []
        self.after_give_back = None  # called once after a worker goes idle

    def _new_worker(self) -> FakeWorker:  # type: ignore[override]
        worker = FakeWorker()
        with self._lock:
            self._all.append(worker)  # type: ignore[arg-type]
        self.made.append(worker)
        return worker

    def _give_back(self, worker) -> None:
        super()._give_back(worker)
        if self.after_give_back is not None:
            hook, self.after_give_back = self.after_give_back, None
            hook()


def _run_in_thread(pool: FakePool, source: str, owner: object) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(
        target=lambda: out.append(pool.run(Program(source), language="python", limits=LIMITS, owner=owner)),
        daemon=True,
    )
    thread.start()
    return thread, out


def _release_all(pool: FakePool) -> None:
    for worker in pool.made:
        worker.release.set()
        worker.gate.set()


def test_stop_runs_reaches_a_run_on_a_worker_another_call_just_gave_back():
    # Call a's run ends and its worker goes idle; call b takes it before a's run() returns. The pool must
    # still know the worker as b's: b's Ctrl-C (stop_runs) has to stop b's run, not wait for its CPU limit.
    pool, b = FakePool(), object()
    later: list = []

    def b_takes_the_worker() -> None:
        later.append(_run_in_thread(pool, "block", b))
        assert pool.made[0].running.wait(5)

    pool.after_give_back = b_takes_the_worker
    try:
        assert (
            pool.run(Program("quick"), language="python", limits=LIMITS, owner=object()).status is Status.OK
        )
        thread, out = later[0]
        pool.stop_runs(b)
        thread.join(5)
        assert not thread.is_alive(), "stop_runs missed the run of the call that took the worker back"
        assert out[0].status is Status.SANDBOX_ERROR
    finally:
        _release_all(pool)


def test_stop_runs_never_kills_a_worker_already_in_another_calls_hands():
    # Call a's run ends as a's Ctrl-C stops a's runs. Its worker, let go, must not be killed under call b,
    # which took it from the idle queue: b's program came back a sandbox_error it never caused.
    pool, a, b = FakePool(), object(), object()
    thread_a, out_a = _run_in_thread(pool, "gate", a)
    assert pool.made and pool.made[0].running.wait(5)
    worker = pool.made[0]
    later: list = []

    def a_ends_and_b_starts() -> None:
        worker.gate.set()
        thread_a.join(0.5)  # with the kill under the pool's lock, a cannot give the worker back yet
        later.append(_run_in_thread(pool, "block", b))
        for w in list(pool.made):
            w.running.wait(0.5)

    worker.before_kill = a_ends_and_b_starts
    try:
        pool.stop_runs(a)
        thread_a.join(5)
        thread_b, out_b = later[0]
        thread_b.join(0.3)
        assert thread_b.is_alive(), f"call b's run was killed by call a's stop_runs: {out_b}"
        assert out_a[0].status is Status.OK  # a's run had ended before the kill: its result stands
    finally:
        _release_all(pool)
    thread_b.join(5)
    assert out_b[0].status is Status.OK


def test_a_ctrl_c_while_the_threads_start_raises_interrupted(monkeypatch):
    # The second thread's start is interrupted while the first runs. join() raises for a thread never started: the call raised
    # RuntimeError ("cannot join thread before it is started") instead of Interrupted with its results.
    pool = FakePool()
    monkeypatch.setattr(api, "_pool", pool)
    real = threading.Thread

    class InterruptedStart(real):
        def start(self) -> None:
            if self.name.endswith("-1"):
                raise KeyboardInterrupt
            super().start()

    monkeypatch.setattr(api.threading, "Thread", InterruptedStart)
    with pytest.raises(Interrupted) as e:
        try:
            execute_many(["block", "print(1)", "print(2)"], workers=3, progress=False)
        finally:
            monkeypatch.setattr(api.threading, "Thread", real)
            _release_all(pool)
    assert e.value.results[0] is None  # stopped by the interrupt, not reported as a sandbox_error
    assert pool.made[0].killed.is_set()


class SecondCtrlC(FakePool):
    """A second Ctrl-C arrives while the interrupted call stops its runs."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupts = 1

    def stop_runs(self, owner: object) -> None:
        if self.interrupts:
            self.interrupts -= 1
            raise KeyboardInterrupt
        super().stop_runs(owner)


def test_a_second_ctrl_c_still_raises_interrupted_with_the_results(monkeypatch):
    # The second Ctrl-C escaped the loop that stops the runs as a plain KeyboardInterrupt: the program that
    # had finished was lost, as was the promise of `Interrupted`.
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's KeyboardInterrupt here")
    pool = SecondCtrlC()
    monkeypatch.setattr(api, "_pool", pool)
    caught: BaseException | None = None
    try:
        execute_many(["print(0)", "ctrl-c"], workers=1, progress=False)
    except KeyboardInterrupt as e:
        caught = e
    finally:
        _release_all(pool)
    assert isinstance(caught, Interrupted), repr(caught)
    assert caught.results[0].stdout == "print(0)" and caught.results[1] is None
    assert pool.made[0].killed.is_set()  # the run still going was stopped all the same
