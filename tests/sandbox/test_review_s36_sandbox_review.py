"""Review of session 36's sandbox changes (mounts, worker shutdown, numpy names), one adversarial property
a test.

- `jail._read_only_below` matched the top bind against mountinfo's names by string: an `extra_readonly`
  path written "/data/" (or "/data//x") matched no mount point, so neither the bind nor any mount under
  it was remounted, and a program wrote to the host directory through it.
- `testcode._numpy_object` gave a test the judge's genuine numpy object of any public numpy name the
  program claimed for the name the test wrote: a function of the program's dressed as numpy.save,
  numpy.testing's runstring or measure (which run a string), ctypeslib.load_library or
  lib.format.open_memmap made the test's own call of that name run numpy's in the judge (writing a file,
  running code). Now only numpy's namespaces of pure computation count, never its I/O or state names.
- `worker.close_workers` interrupted in its waits (a Ctrl-C) removed no worker's cgroups and left the
  zygotes it had not waited for running.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time

import pytest
from redteam_kit import FAST, assert_passes, reap_and_remove

from codefoundry.sandbox import Judge, Limits, execute
from codefoundry.sandbox.result import Isolation
from codefoundry.sandbox.worker import Worker, close_workers

# The errno of writing into `where`, else "done"
_WRITE = """
try:
    open({where!r} + '/planted', 'w').close()
    print('done')
except OSError as e:
    print(e.errno)
"""


@pytest.mark.parametrize("spelling", ["{d}/", "{d}//", "{d}/."])
def test_an_extra_readonly_path_however_spelled_is_bound_read_only(spelling):
    if not os.path.isdir("/var/tmp"):
        pytest.skip("no /var/tmp to hold a directory outside the jail's own /tmp")
    host = tempfile.mkdtemp(prefix="cf-review-ro-", dir="/var/tmp")  # /tmp is the jail's own tmpfs
    try:
        os.chmod(host, 0o777)  # writable by the program's uid: only the mount stands in the way
        worker = Worker((spelling.format(d=host),))
        try:
            if worker.isolation is Isolation.PROCESS:
                pytest.skip("no mount namespace at the process level")
            r = worker.run(_WRITE.format(where=host), language="python", stdin=None, files=None,
                           limits=FAST, judge=None)  # fmt: skip
        finally:
            worker.close()
        assert not os.path.exists(os.path.join(host, "planted")), "the program wrote to the host directory"
        assert r.stdout.strip() == "30", r  # EROFS
    finally:
        shutil.rmtree(host, ignore_errors=True)


# (the program's function's name, the numpy module it claims, the test's call of that name): the test asks
# for the program's own function, which returns "mine"; numpy's would write a file or run code in the judge.
DRESSED = {
    "save": ("numpy", "save('planted', [1, 2])"),
    "runstring": ("numpy.testing._private.utils", "runstring('import os', {})"),
    "measure": ("numpy.testing._private.utils", "measure('import os')"),
    "load_library": ("numpy.ctypeslib", "load_library('libc', '/')"),
    "open_memmap": ("numpy.lib.format", "open_memmap('planted.npy', mode='w+', shape=(1,))"),
    "seterr": ("numpy", "seterr(all='raise')"),
}


@pytest.mark.parametrize("name", sorted(DRESSED))
def test_a_function_dressed_as_numpys_io_or_code_running_one_stays_the_programs(name):
    pytest.importorskip("numpy")
    module, call = DRESSED[name]
    program = (
        f"def {name}(*args, **kwargs):\n    return 'mine'\n"
        f"{name}.__module__ = {module!r}\n{name}.__qualname__ = {name!r}\n"
        "def f():\n    return 0\n"
    )
    r = execute(program, judge=Judge(tests=(f"assert {call} == 'mine'",), entry_point="f"),
                limits=Limits(cpu_seconds=5, memory_mb=512))  # fmt: skip
    assert_passes(r)


def _ctrl_c(signum, frame):
    raise KeyboardInterrupt


def test_a_ctrl_c_in_the_shutdown_still_removes_every_workers_cgroups():
    workers = [Worker(), Worker()]
    paths = [path for worker in workers for path in worker.cgroups]
    stuck = workers[0].proc
    try:
        if not workers[1].cgroups:
            pytest.skip("the workers here have no cgroups of their own")
        os.kill(stuck.pid, signal.SIGSTOP)  # it will not see its pipes close: the shutdown waits for it
        previous = signal.signal(signal.SIGALRM, _ctrl_c)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        try:
            with pytest.raises(KeyboardInterrupt):
                close_workers(workers)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        left = [path for path in paths if os.path.exists(path)]
        assert not left, f"cgroups left behind by an interrupted shutdown: {left}"
        deadline = time.monotonic() + 5
        while stuck.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stuck.returncode is not None, "a zygote the shutdown had not waited for was left running"
    finally:
        reap_and_remove([worker.proc for worker in workers], paths)
