"""Python programs and their judges import what is installed in the Python the sandbox runs, as under
`python main.py`: the zygote starts with -S (no `site`), which had left site-packages off sys.path, so
`import numpy` failed in every program and in every judge's setup (EvalPlus-style float checks)."""

from __future__ import annotations

import importlib.util
import sysconfig

import pytest

from codefoundry.sandbox import Judge, Status, execute

needs_numpy = pytest.mark.skipif(importlib.util.find_spec("numpy") is None, reason="needs numpy")


def test_site_packages_come_after_the_standard_library():
    r = execute("import sys\nprint(*sys.path, sep='\\n')")
    assert r.status is Status.OK
    path = r.stdout.splitlines()
    purelib, stdlib = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]
    assert purelib in path and path.index(stdlib) < path.index(purelib), path
    assert path[0] == ""  # the program's own directory first, as under `python main.py`


@needs_numpy
def test_a_program_imports_an_installed_package():
    r = execute("import numpy as np\nprint(int(np.arange(10).sum()), float(np.linalg.det(np.eye(3))))")
    assert (r.status, r.stdout) == (Status.OK, "45 1.0\n"), (r.status, r.stderr[-500:])


@needs_numpy
def test_a_judges_setup_imports_an_installed_package():
    setup = "import numpy as np\ndef close(a, b):\n    return bool(np.allclose(a, b, atol=1e-6))\n"
    judge = Judge(tests=("assert close(halves([1, 3]), [0.5, 1.5])",), entry_point="halves", setup=setup)
    good = execute("def halves(xs):\n    return [x / 2 for x in xs]\n", judge=judge)
    bad = execute("def halves(xs):\n    return [x / 3 for x in xs]\n", judge=judge)
    assert good.status is Status.OK, (good.message, good.tests)
    assert bad.status is Status.FAILED and bad.tests_completed, (bad.message, bad.tests)
