"""What a run's process inherits besides its limits (numeric libraries held to one thread, a core limit that
a piping core_pattern also honours), and a limit no result could carry."""

import json
import os
import subprocess
import sys

import pytest

from codefoundry.sandbox import Judge, Limits, execute

_NUMPY_UNDER_A_TIGHT_PROCESS_LIMIT = """
import json
from codefoundry.sandbox import Limits, execute
r = execute("import numpy\\nprint(numpy.ones(3).sum())", limits=Limits(processes=2))
print(json.dumps([r.status.value, r.stdout, r.stderr[-300:]]))
"""


def test_numpy_imports_when_the_worker_sees_more_cpus_than_the_run_may_have_threads():
    pytest.importorskip("numpy")
    # Unpinned, the worker sees every CPU, and OpenBLAS starts a thread per CPU as numpy loads; under the
    # run's process limit one could not start and OpenBLAS raised SIGINT: `import numpy` failed with
    # KeyboardInterrupt. Two processes (the program and, at the namespaces level, the parse helper) leave
    # no room for a second thread on any machine of 2 CPUs or more.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs for OpenBLAS to want a thread of its own")
    env = {**os.environ, "CODEFOUNDRY_SANDBOX_PIN": "0"}
    out = subprocess.run(
        [sys.executable, "-c", _NUMPY_UNDER_A_TIGHT_PROCESS_LIMIT], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    status, stdout, stderr = json.loads(out.stdout.splitlines()[-1])
    assert (status, stdout) == ("ok", "3.0\n"), stderr


def test_the_judge_holds_numeric_libraries_to_one_thread_too():
    # The judge imports numpy when an array arrives, under 16 processes of its own.
    judge = Judge(
        tests=("import os\nassert os.environ.get('OPENBLAS_NUM_THREADS') == '1', dict(os.environ)",),
        entry_point="f",
    )
    r = execute("def f():\n    return 1\n", judge=judge)
    assert r.passed, (r.status, r.stderr[-500:], r.extra)


def test_a_programs_core_limit_is_one_byte_which_a_piping_core_pattern_honours():
    # With a core_pattern that pipes to a helper (apport, systemd-coredump) the kernel ignores RLIMIT_CORE,
    # 0 included, and hands the helper every crashing program's memory; 1 is the value it honours there.
    # (This machine's pattern is a file name, where 1 byte is below a core file's one page: no file.)
    r = execute("import resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))", limits=Limits())
    assert r.stdout == "(1, 1)\n", (r.status, r.stderr)


def test_an_output_cap_past_what_a_result_frame_carries_is_refused():
    # The result returns in one frame of at most 4 GiB, its output as JSON text of up to 6 characters a
    # byte: a cap of 1 GiB let a flood fail inside the worker, as a sandbox_error, after running for it.
    with pytest.raises(ValueError, match=r"Limits.output_bytes must be between 0 and 536870912"):
        Limits(output_bytes=1 << 30)
    assert Limits(output_bytes=1 << 29).output_bytes == 1 << 29
