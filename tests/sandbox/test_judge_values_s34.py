"""Values a judged solution returns that its tests compare with values they build themselves: the
`datetime` module's and numpy's scalars cross the judge channel by value (they stayed handles in the
program, whose comparisons with the judge's values are false, so correct solutions failed), and the
program's own classes compare in the program when both sides are its objects."""

from __future__ import annotations

import pytest

from codefoundry.sandbox import Judge, Limits, crossing, execute

FAST = Limits(cpu_seconds=5, memory_mb=512)
DT = "import datetime\n"
FROM_DT = "from datetime import date, datetime, time, timedelta, timezone\n"


def judged(program: str, *tests: str, entry_point: str = "f"):
    return execute(program, judge=Judge(tests=tests, entry_point=entry_point), limits=FAST)


def assert_passes(program: str, test: str) -> None:
    r = judged(program, test)
    assert r.passed, (r.status, r.tests, r.message)


@pytest.mark.parametrize(
    "program, test",
    [
        (DT + "def f(y):\n    return datetime.date(y, 2, 28) + datetime.timedelta(days=1)",
         DT + "assert f(2024) == datetime.date(2024, 2, 29)"),
        (FROM_DT + "def f():\n    return datetime(2020, 1, 2, 3, 4, 5, 6)",
         FROM_DT + "assert f() == datetime(2020, 1, 2, 3, 4, 5, 6)"),
        (FROM_DT + "def f(a, b):\n    return b - a",
         FROM_DT + "assert f(date(2020, 1, 1), date(2020, 3, 1)) == timedelta(days=60)"),
        (FROM_DT + "def f(t):\n    return t.replace(hour=(t.hour + 1) % 24)",
         FROM_DT + "assert f(time(23, 30)) == time(0, 30)"),
        # An aware value: its zone crosses as an offset; equality of instants and the printed form hold.
        (FROM_DT + "def f():\n    return datetime(2020, 6, 1, 12, tzinfo=timezone(timedelta(hours=2), 'X'))",
         FROM_DT + "v = f()\nassert v == datetime(2020, 6, 1, 10, tzinfo=timezone.utc)\n"
         "assert v.tzname() == 'X' and str(v) == '2020-06-01 12:00:00+02:00'"),
        (FROM_DT + "def f():\n    return timezone.utc",
         FROM_DT + "assert f() == timezone.utc and f().utcoffset(None) == timedelta(0)"),
        # The test relies on the solution's import: the judge builds the expected value with its own class.
        (FROM_DT + "def f():\n    return date(2000, 1, 1)", "assert f() == date(2000, 1, 1)"),
        # fold survives (a repeated wall-clock hour); a datetime is no date to ==.
        (FROM_DT + "def f():\n    return datetime(2020, 11, 1, 1, 30, fold=1)",
         FROM_DT + "assert f().fold == 1 and f() != date(2020, 11, 1)"),
    ],
    ids=["date-module", "datetime", "timedelta-args", "time-arg", "aware", "timezone", "solutions-import",
         "fold"],
)  # fmt: skip
def test_a_correct_solution_returning_a_datetime_value_passes(program, test):
    assert_passes(program, test)


def test_a_zoneinfo_datetime_arrives_as_the_same_instant_with_a_fixed_offset():
    program = (
        "from datetime import datetime\nfrom zoneinfo import ZoneInfo\n"
        "def f():\n    return datetime(2020, 7, 1, 12, tzinfo=ZoneInfo('UTC'))"
    )
    test = (
        FROM_DT
        + "v = f()\nassert v == datetime(2020, 7, 1, 12, tzinfo=timezone.utc)\nassert v.tzname() == 'UTC'"
    )
    assert_passes(program, test)


@pytest.mark.parametrize(
    "program",
    [
        # A subclass whose == always says yes arrives as the plain value.
        FROM_DT + "class D(date):\n    def __eq__(self, other):\n        return True\n"
        "def f():\n    return D(1999, 1, 1)",
        # The solution patches the class the test relies on its import for: the judge's own is used.
        "import datetime as m\nclass D(m.date):\n    def __eq__(self, other):\n        return True\n"
        "m.date = D\ndate = D\ndef f():\n    return D(1999, 1, 1)",
        "from datetime import date\ndef f():\n    return date(1999, 1, 1)",
    ],
    ids=["subclass", "patched-class", "wrong-value"],
)
def test_a_wrong_datetime_value_fails(program):
    r = judged(program, "assert f() == date(2000, 1, 1)")
    assert not r.passed and r.status.value == "failed", (r.status, r.tests, r.message)


@pytest.mark.parametrize(
    "body",
    [
        b'{"dt": ["date", 2020, 13, 1]}',  # month out of range: the constructor's ValueError
        b'{"dt": ["date", 2020, 1]}',  # too few fields
        b'{"dt": ["datetime", 2020, 1, 1, 0, 0, 0, 0, 0, [99999999999999, null]]}',  # offset past 24 h
        b'{"dt": ["time", 1, 2, 3, 4, 0, [0, "' + b"n" * 201 + b'"]]}',  # a zone name past 200 characters
        b'{"dt": ["date", 2020.0, 1, 1]}',  # no int
        b'{"dt": ["date", true, 1, 1]}',  # a bool is no int here
        b'{"dt": ["week", 1]}',
        b'{"dt": "date"}',
        b'{"dt": ["timezone", null]}',
        b'{"dt": ["timedelta", 1000000000, 0, 0]}',  # past timedelta.max: OverflowError
    ],
    ids=["range", "fields", "offset", "name", "float", "bool", "kind", "no-list", "no-zone", "overflow"],
)
def test_a_malformed_datetime_is_not_the_exception_a_test_expects(body):
    # The program writes its reply frame itself: whatever rebuilding raises must not reach a test that
    # expects that error of the call (it fails as a program that stopped answering).
    program = (
        "import os\n"
        "def f():\n"
        f"    frame = b'[\"r\", ' + {body!r} + b']'\n"
        "    os.write(4, len(frame).to_bytes(4, 'big') + frame)\n"
        "    os._exit(0)\n"
    )
    test = (
        "try:\n    f()\nexcept (ValueError, TypeError, OverflowError):\n    pass\n"
        "else:\n    raise AssertionError"
    )
    r = judged(program, test)
    assert r.status.value == "failed" and not r.passed, (r.status, r.tests)
    assert any("program stopped answering" in (t.error or "") for t in r.tests), r.tests


def test_numpy_scalars_compare_as_plain_values():
    pytest.importorskip("numpy")
    program = (
        "import numpy as np\n"
        "def f(xs):\n    a = np.array(xs)\n"
        "    return a.sum(), a.mean(), a.max() > 2, np.float32(0.5), a.dtype.type(7)"
    )
    test = (
        "s, m, big, half, seven = f([1, 2, 3])\n"
        "assert s == 6 and type(s) is int\nassert m == 2.0 and big is True\n"
        "assert half == 0.5 and seven == 7"
    )
    assert_passes(program, test)


def test_program_class_instances_compare_in_the_program():
    program = (
        "from dataclasses import dataclass\nimport enum\n"
        "@dataclass\nclass Point:\n    x: int\n    y: int\n"
        "class Color(enum.Enum):\n    RED = 1\n    BLUE = 2\n"
        "def f(n):\n    return Point(n, n + 1), Color.RED if n else Color.BLUE"
    )
    assert judged(program, "p, c = f(1)\nassert p == Point(1, 2) and c == Color.RED").passed
    r = judged(program, "p, c = f(0)\nassert c == Color.RED")
    assert r.status.value == "failed"


# -- a test naming the program's exception classes --
INVALID = "class Invalid(ValueError):\n    pass\n"
HIERARCHY = "class AppError(Exception):\n    pass\nclass NotFound(AppError):\n    pass\n"
CATCH = "try:\n    f(-1)\nexcept {name} as e:\n    assert str(e) == 'neg', str(e)\nelse:\n    raise AssertionError"


@pytest.mark.parametrize(
    "program, test",
    [
        (INVALID + "def f(x):\n    if x < 0:\n        raise Invalid('neg')\n    return x", CATCH.format(name="Invalid")),
        (INVALID + "def f(x):\n    raise Invalid('neg')",
         "try:\n    f(-1)\nexcept Exception as e:\n    caught = e\nassert isinstance(caught, Invalid)\n"
         "assert isinstance(caught, ValueError) and issubclass(Invalid, ValueError)"),
        (HIERARCHY + "def f(x):\n    raise NotFound('neg')", CATCH.format(name="AppError")),
        (HIERARCHY + "def f(x):\n    raise NotFound('neg')", CATCH.format(name="NotFound")),
        ("Invalid = KeyError\ndef f(x):\n    raise KeyError('neg')",
         "try:\n    f(-1)\nexcept Invalid:\n    pass\nelse:\n    raise AssertionError"),
        # The test raises the program's class itself and catches it by its builtin base.
        (INVALID + "def f(x):\n    return x", "try:\n    raise Invalid('t')\nexcept ValueError:\n    pass"),
    ],
    ids=["except", "isinstance", "except-base", "except-sub", "alias-of-builtin", "test-raises-it"],
)  # fmt: skip
def test_a_test_naming_the_programs_exception_class_catches_it(program, test):
    # The name was a handle to the program's class: `except Invalid` raised TypeError (catching a class
    # that does not inherit from BaseException), and a correct solution failed.
    assert_passes(program, test)


@pytest.mark.parametrize(
    "program, name",
    [
        (INVALID + "def f(x):\n    raise ValueError('neg')", "Invalid"),  # its base, not the class
        (HIERARCHY + "def f(x):\n    raise AppError('neg')", "NotFound"),  # a parent, not the class
        (INVALID + "class Other(ValueError):\n    pass\ndef f(x):\n    raise Other('neg')", "Invalid"),
    ],
    ids=["base-raised", "parent-raised", "sibling-raised"],
)
def test_a_test_naming_the_programs_exception_class_does_not_catch_others(program, name):
    r = judged(program, CATCH.format(name=name))
    assert r.status.value == "failed", (r.status, r.tests)


def test_program_exception_classes_are_rebuilt_once_under_their_lineage():
    sub = crossing.program_exception_class("NotFound", ["AppError", "LookupError"])
    assert sub is crossing.program_exception_class("NotFound", ["AppError", "LookupError"])
    assert sub.__mro__[1] is crossing.program_exception_class("AppError", ["LookupError"])
    assert issubclass(sub, LookupError) and sub.__name__ == "NotFound"
    assert crossing.program_exception_class("ValueError", ["Exception"]) is ValueError
    error = crossing.rebuild_exception("NotFound", "m", ["AppError", "LookupError"])
    assert type(error) is sub and str(error) == "m"


@pytest.mark.parametrize(
    "name, lineage",
    [
        ("E", ["A"] * (crossing.MAX_LINEAGE + 1) + ["Exception"]),  # longer than any lineage sent
        ("E", ["A", 7, "Exception"]),
        ("E", ["A", "object"]),  # no builtin exception last
        ("E", []),
        ("E", ["SystemExit"]),  # not one a test's `except Exception` sees
        ("not a name", ["Exception"]),
        ("E" * (crossing.MAX_NAME + 1), ["Exception"]),
        ("E", ["a b", "Exception"]),
    ],
    ids=["too-long", "no-str", "no-builtin", "empty", "special", "no-identifier", "long-name", "bad-parent"],
)
def test_a_forged_lineage_makes_no_class(name, lineage):
    kind = crossing.program_exception_class(name, lineage)
    assert kind is None or kind in (Exception,) or kind.__mro__[1] is Exception, kind
    error = crossing.rebuild_exception(name, "m", lineage)
    assert isinstance(error, Exception) and not isinstance(error, (SystemExit, KeyboardInterrupt))


# -- the solution's names inside functions and classes the tests define --
STACK = (
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n"
    "        self.items.append(x)\n    def size(self):\n        return len(self.items)\n"
    "def f(x):\n    if x < 0:\n        raise Invalid('neg')\n    return x\n" + INVALID
)


@pytest.mark.parametrize(
    "test",
    [
        "def check():\n    s = Stack()\n    s.push(1)\n    assert s.size() == 1\ncheck()",
        "class TestStack:\n    def test_push(self):\n        s = Stack()\n        s.push(2)\n"
        "        assert s.size() == 1\nTestStack().test_push()",
        "class TestStack:\n    kind = Stack\nassert TestStack.kind().size() == 0",
        "assert [Stack().size() for _ in range(2)] == [0, 0]",
        "def check(candidate):\n    try:\n        candidate(-1)\n    except Invalid:\n        return\n"
        "    raise AssertionError\ncheck(f)",
    ],
    ids=["function", "method", "class-body", "comprehension", "except-in-function"],
)
def test_the_solutions_names_work_inside_what_the_tests_define(test):
    # Only top-level test code saw the program's names: a `def check():` or a unittest-style class using
    # the solution's `Stack` raised NameError, and a correct solution failed.
    assert_passes(STACK, test)


def test_a_name_neither_side_defines_is_still_a_name_error_inside_a_function():
    r = judged(STACK, "def check():\n    return undefined_name\ncheck()")
    assert r.status.value == "failed" and "NameError" in r.tests[0].error, r.tests
