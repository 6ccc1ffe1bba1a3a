"""A Ctrl-C (KeyboardInterrupt) landing in `Worker.__init__` after the zygote started (session 36): the
start must end what it had started, the zygote and the pipes to it, and re-raise. Between the zygote's
start and the hello nothing closed them, and the zygote went on waiting for its hello on pipes the caller
still held open, with nothing left to close it.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from codefoundry.sandbox import worker as worker_module


def _gone(pid: int, wait: float = 5.0) -> bool:
    """Whether `pid` is gone (reaped, or a zombie: ended, waiting only for its parent) within `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@pytest.fixture
def started(monkeypatch):
    """The zygote processes that `Worker` starts (every `subprocess.Popen` made meanwhile)."""
    made: list[subprocess.Popen] = []

    class Recording(subprocess.Popen):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(subprocess, "Popen", Recording)
    yield made
    for proc in made:  # whatever a failing run of the test left
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_ctrl_c_right_after_the_zygote_started_ends_it(started, monkeypatch):
    """The interrupt lands on the first call `__init__` makes once the zygote is started (closing the
    zygote's ends of the pipes), as a Ctrl-C between two lines of it would."""
    real_close = os.close
    fired: list[int] = []

    def close(fd: int) -> None:
        real_close(fd)
        if started and not fired:
            fired.append(fd)
            raise KeyboardInterrupt

    fds_before = set(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patch:
        patch.setattr(os, "close", close)
        with pytest.raises(KeyboardInterrupt):
            worker_module.Worker()
    assert fired and len(started) == 1, (fired, started)
    pid = started[0].pid
    assert _gone(pid), f"the zygote {pid} outlived the interrupted start"
    assert set(os.listdir("/proc/self/fd")) <= fds_before, "the start's pipes were left open"


def test_a_ctrl_c_during_the_hello_ends_the_zygote_too(started, monkeypatch):
    """The same for an interrupt while the zygote is sent its hello (where the start already ended it)."""

    def interrupted(self, obj: dict) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(worker_module.Worker, "_send", interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker_module.Worker()
    assert len(started) == 1 and _gone(started[0].pid), started
