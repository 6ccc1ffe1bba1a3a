"""Names a judged solution imports from numpy, and numpy submodules it imports, are the judge's own numpy
objects to the tests (session 36). Session 35 gave a test the judge's numpy for the solution's `np`; names
bound by `from numpy import array_equal`, `from numpy import *`, `import numpy.testing as npt` or `from
numpy.testing import assert_allclose` were still the program's, which a program could patch so that a test
relying on them passed a wrong answer. Each forged program must fail (not pass, not `sandbox_error`) and
the same test must pass a correct one.
"""

from __future__ import annotations

import pytest
from redteam_kit import assert_fails, assert_passes, brief

from codefoundry.sandbox import Judge, Limits, execute

pytest.importorskip("numpy")

LIMITS = Limits(cpu_seconds=5, memory_mb=512)
# The solution returns zeros, and a correct one returns what the test expects: the tests below ask for [1, 2].
WRONG = "def f():\n    return numpy.zeros(2)\n"
RIGHT = "def f():\n    return numpy.array([1.0, 2.0])\n"


def judged(program: str, *tests: str):
    return execute(program, judge=Judge(tests=tests, entry_point="f"), limits=LIMITS)


# (how the solution imports the name, how it makes numpy lie under it, the test that relies on the import).
# The lies change numpy's genuine objects in place (the name is still numpy's function, now saying yes), or
# rebind the function in numpy.testing, or dress a function of the program's as numpy's.
YES = "(lambda *a, **k: True).__code__"
CASES = {
    "from-import": (
        "from numpy import array_equal\n",
        f"array_equal._implementation.__code__ = {YES}\n",
        "assert array_equal(f(), [1, 2])",
    ),
    "star-import": (
        "from numpy import *\n",
        f"array_equal._implementation.__code__ = {YES}\n",
        "assert array_equal(f(), [1, 2])",
    ),
    "dressed-as-numpy": (
        "",
        "def array_equal(*a, **k):\n    return True\narray_equal.__module__ = 'numpy'\n",
        "assert array_equal(f(), [1, 2])",
    ),
    "testing-module": (
        "import numpy.testing as npt\n",
        "npt.assert_allclose = lambda *a, **k: None\n",
        "npt.assert_allclose(f(), [1, 2])",
    ),
    "testing-function": (
        "from numpy.testing import assert_allclose\n",
        "assert_allclose.__code__ = (lambda *a, **k: None).__code__\n",
        "assert_allclose(f(), [1, 2])",
    ),
    "linalg-function": (
        "from numpy.linalg import norm\n",
        "norm._implementation.__code__ = (lambda *a, **k: 5 ** 0.5).__code__\n",
        "assert abs(norm(f()) - 5 ** 0.5) < 1e-9",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_program_lying_through_a_name_it_imported_from_numpy_fails(case):
    imports, lie, test = CASES[case]
    program = "import numpy\n" + imports + lie + WRONG
    r = judged(program, test)
    assert_fails(r)
    assert r.tests[0].error, brief(r)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0]])
def test_a_correct_program_using_that_name_passes(case):
    imports, _, test = CASES[case]
    assert_passes(judged("import numpy\n" + imports + RIGHT, test))


def test_a_function_the_program_defines_itself_is_its_own():
    """A solution's own `array_equal` (not numpy's) is what a test relying on it calls, as any function
    of the solution's: the judge's numpy stands in only for numpy's objects."""
    program = (
        "import numpy\ndef array_equal(a, b):\n    return list(a) == [0.0, 0.0] and b == 'mine'\n" + WRONG
    )
    assert_passes(judged(program, "assert array_equal(f(), 'mine')"))


def test_a_name_for_another_numpy_object_stays_the_programs():
    """A lie can get the test only numpy's object of the name the test wrote: `Solution` bound to numpy's
    `save` (which would write a file wherever it runs) stays the program's, a handle run in the program."""
    program = "import numpy\nSolution = numpy.save\ndef f():\n    return 0\n"
    test = "import numpy\nassert type(Solution) is not type(numpy.save), type(Solution)"
    assert_passes(judged(program, test))


def test_a_name_from_a_private_numpy_module_or_a_made_up_one_stays_the_programs():
    """The judge finds numpy's objects only by public attributes: a name the program gave a private or
    invented `__module__` is not imported in the judge, and its answer is the program's (here a lie that
    fails the test, since a handle's result of a forged function is still the program's wrong value)."""
    program = (
        "import numpy\n"
        "def array_equal(*a, **k):\n    return False\n"
        "array_equal.__module__ = 'numpy.f2py.__main__'\n"
        "def allclose(*a, **k):\n    return False\n"
        "allclose.__module__ = 'numpy.nothing_here'\n" + RIGHT
    )
    r = judged(program, "assert not array_equal(f(), [1, 2])", "assert not allclose(f(), [1, 2])")
    assert r.tests[0].passed and r.tests[1].passed, brief(r)
