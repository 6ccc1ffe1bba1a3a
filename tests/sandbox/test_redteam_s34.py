"""Red team of what crosses the judge channel since session 34 (crossing.py, rpc.py, testcode.py): the
`datetime` module's values and numpy's scalars by value, and the program's exception classes rebuilt in
the judge under their lineage, which a test naming the class gets through the "exists" request.

The program owns its whole process, its copy of rpc.py and crossing.py included (`RAW` writes any frame;
`LIE` replaces what its side answers to "exists", `LINEAGE` what it reports as an exception's lineage), so
each test gives a wrong program one trick aimed at these paths: a name the test uses turned into a class
that catches the test's own failures or into a judge-side standard object that ends or stalls the judge,
lineages that make the judge keep megabytes across runs, class-cache thrashing, datetime bodies and time
zone names that are costly or odd. Each must fail (never pass, never `sandbox_error`), and the judge must
still serve correct verdicts afterwards.
"""

from __future__ import annotations

import pytest
from redteam_kit import brief, src

from codefoundry.sandbox import Judge, Limits, Status, crossing, execute

LIMITS = Limits(cpu_seconds=5, memory_mb=512)
RAW = src("""
    import os, sys
    rpc = sys.modules['codefoundry_rpc']
    def send_raw(body):
        os.write(4, len(body).to_bytes(4, 'big') + body)
""")
# What the program's side answers when the judge asks about a name the test uses: ANSWER, an expression
# of `obj` (the program's object of that name).
LIE = "import sys\nsys.modules['codefoundry_rpc'].crossing.exception_identity = lambda obj: ANSWER\n"
# What the program's side reports as any exception's lineage: LINEAGE, an expression.
LINEAGE = "import sys\nsys.modules['codefoundry_rpc'].crossing.exception_lineage = lambda t: LINEAGE\n"
# Test code run in the judge: the total size of the names its cache of program exception classes holds.
CACHED_NAMES = (
    "import sys\ncache = sys.modules['codefoundry_rpc'].crossing._PROGRAM_EXCEPTIONS\n"
    "held = sum(len(n) + sum(map(len, lineage)) for n, lineage in cache)\n"
    "assert held < 200_000, held\n"
)
# The classic "expects an error" test whose `assert False` sits inside the try.
EXPECTS_INVALID = "try:\n    f(-1)\n    assert False, 'no error'\nexcept Invalid:\n    pass\n"


def judged(program: str, *tests: str, entry_point: str = "f", setup: str = ""):
    return execute(program, judge=Judge(tests=tests, entry_point=entry_point, setup=setup), limits=LIMITS)


def lying(answer: str, body: str) -> str:
    return LIE.replace("ANSWER", answer) + src(body)


def assert_fails(r, error: str = "") -> None:
    assert r.status is Status.FAILED and not r.passed, brief(r)
    if error:
        assert any(error in (t.error or "") for t in r.tests), (error, brief(r))


def assert_judge_still_judges() -> None:
    """The next runs on this worker get correct verdicts: a correct program passes, a wrong one fails."""
    ok = judged("def f(x):\n    return x + 1\n", "assert f(1) == 2", "assert f(2) == 3")
    assert ok.passed, brief(ok)
    assert_fails(judged("def f(x):\n    return x\n", "assert f(1) == 2"))
    invalid = "class Invalid(ValueError):\n    pass\ndef f(x):\n    if x < 0:\n        raise Invalid('neg')\n"
    r = judged(invalid, EXPECTS_INVALID)
    assert r.passed, brief(r)


# -- a name the test uses, turned into something else -----------------------------------------------------
@pytest.mark.parametrize(
    "program",
    [
        lying("['AssertionError', ['Exception']]", "class Invalid(ValueError):\n    pass\ndef f(x):\n    return x\n"),
        lying("['Exception', ['Exception']]", "class Invalid(ValueError):\n    pass\ndef f(x):\n    return x\n"),
        "Invalid = AssertionError\ndef f(x):\n    return x\n",
        "Invalid = Exception\ndef f(x):\n    return x\n",
        "Invalid = BaseException\ndef f(x):\n    return x\n",
        "Invalid = (ValueError, AssertionError)\ndef f(x):\n    return x\n",
    ],
    ids=["forged-assertion-error", "forged-exception", "alias-assertion-error", "alias-exception",
         "alias-base-exception", "alias-tuple"],
)  # fmt: skip
def test_a_name_the_test_catches_never_catches_the_tests_own_assertion(program):
    # `except Invalid` around `f(-1); assert False`: with Invalid the judge's AssertionError (or one of its
    # bases), the test's own failed assert is caught, and a program that never raises passes.
    assert_fails(judged(program, EXPECTS_INVALID))


@pytest.mark.parametrize(
    "module, qualname, call",
    [("os", "abort", "Solution()"), ("os", "_exit", "Solution(0)"), ("time", "sleep", "Solution(3600)"),
     ("signal", "pause", "Solution()"), ("sys", "exit", "Solution()"),
     ("dataclasses", "inspect.os.abort", "Solution()"), ("builtins", "breakpoint", "Solution()"),
     ("builtins", "exec", "Solution('import os; os.abort()')"), ("collections", "deque.__init__", "Solution()")],
    ids=["abort", "exit", "sleep", "pause", "sys-exit", "through-a-pure-modules-import", "builtin-breakpoint",
         "builtin-exec", "private-name"],
)  # fmt: skip
def test_a_program_class_named_like_a_standard_function_is_not_run_in_the_judge(module, qualname, call):
    # A test relying on the solution's `from math import isclose` gets the judge's own standard object of
    # the `__module__` and `__qualname__` the program reports: any object of any loaded standard module. A
    # class claiming to be os.abort made the test's `Solution()` kill the long-lived judge.
    program = (
        f"class Solution:\n    __module__ = {module!r}\n    __qualname__ = {qualname!r}\n"
        "    def f(self, x):\n        return x\n"
    )
    assert_fails(judged(program, f"s = {call}\nassert s.f(1) == 2"))
    assert_judge_still_judges()


def test_a_standard_object_a_test_relies_on_the_solutions_import_for_still_resolves():
    program = (
        "from math import isclose\nfrom fractions import Fraction\nfrom heapq import heappush, heappop\n"
        "from functools import reduce\nfrom collections import Counter, OrderedDict\nNumber = int\n"
        "def f(x):\n    return x / 3\n"
    )
    r = judged(
        program, "assert isclose(f(1), 0.3333333, rel_tol=1e-6)", "assert Fraction(1, 3) != f(1)",
        "h = []\nheappush(h, 2)\nheappush(h, 1)\nassert heappop(h) == 1 and reduce(max, [1, 3]) == 3",
        "assert Counter('aab')['a'] == 2 and type(OrderedDict.fromkeys('ab')) is OrderedDict",
        "assert isinstance(3, Number) and Number is int",
    )  # fmt: skip
    assert r.passed, brief(r)


@pytest.mark.parametrize(
    "answer",
    ["['Solution', ['Exception']]", "['f', ['ValueError']]", "['Solution', ['Solution', 'Exception']]"],
    ids=["exception-class", "entry-point-name", "own-name-in-lineage"],
)
def test_a_program_class_reported_as_an_exception_class_only_fails(answer):
    program = lying(answer, "class Solution:\n    def f(self, x):\n        return x + 1\n")
    assert_fails(judged(program, "assert Solution().f(1) == 2"))


# -- lineages the judge keeps ------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["raised", "exists"])
def test_a_lineage_of_huge_names_is_not_kept_by_the_judge(where):
    # The judge's cache of program exception classes is keyed by (name, lineage): a lineage of 17 names of
    # megabytes each (only its last, a builtin, and its first, the parent, were checked) was kept across
    # runs, 256 of them: past the judge's 2 GB, and every later run failed.
    huge = "['L' * 4_000_000, 'M' * 4_000_000, 'ValueError']"
    if where == "raised":
        program = LINEAGE.replace("LINEAGE", huge) + "class Invalid(ValueError):\n    pass\n"
        test = "try:\n    f(-1)\nexcept ValueError:\n    pass\n" + CACHED_NAMES
    else:
        program = lying(f"['Invalid', {huge}]", "class Invalid(ValueError):\n    pass\n")
        test = "try:\n    Invalid\nexcept Exception:\n    pass\n" + CACHED_NAMES  # the lookup asks
    program += "def f(x):\n    raise Invalid('neg')\n"
    r = judged(program, test)
    assert r.passed, brief(r)
    assert_judge_still_judges()


def test_a_lineage_name_over_the_limit_makes_no_class():
    huge = "L" * (crossing.MAX_NAME + 1)
    assert crossing.program_exception_class("Invalid", [huge, "ValueError"]) is None
    assert crossing.program_exception_class("Invalid", ["Ok", huge, "ValueError"]) is None
    assert all(len(part) <= crossing.MAX_NAME for key in crossing._PROGRAM_EXCEPTIONS for part in key[1])
    error = crossing.rebuild_exception("Invalid", "m", [huge, "ValueError"])
    assert type(error) is ValueError and str(error) == "m", type(error)


@pytest.mark.parametrize("base", ["Exception", "LookupError"])
def test_a_class_named_peer_gone_does_not_catch_a_program_that_stopped_answering(base):
    # The name the test catches becomes a judge-made class called PeerGone; the judge's own PeerGone (the
    # program exits mid-call) is no instance of it, and the test fails as a program that stopped answering.
    program = lying(f"['PeerGone', [{base!r}]]", "import os\nclass Invalid(ValueError):\n    pass\n")
    program += "def f(x):\n    os._exit(0)\n"
    test = "E = Invalid  # looked up while the program still answers\ntry:\n    f(-1)\nexcept E:\n    pass"
    assert_fails(judged(program, test), "program stopped answering")
    assert_judge_still_judges()


def test_thrashing_the_class_cache_leaves_later_runs_correct():
    # 600 classes in one run, more than the judge keeps: the next run's Invalid is made afresh, once.
    program = "def f(i):\n    raise type(f'E{i}', (ValueError,), {})('x')\n"
    test = "for i in range(600):\n    try:\n        f(i)\n    except ValueError:\n        pass\n"
    r = judged(program, test, test.replace("f(i)", "f(i % 7)"))
    assert r.passed, brief(r)
    assert len(crossing._PROGRAM_EXCEPTIONS) <= crossing.MAX_CLASSES
    assert_judge_still_judges()


@pytest.mark.parametrize(
    "lineage",
    ["['Invalid'] * 16 + ['ValueError']", "['AssertionError', 'Exception']", "['StopIteration']",
     "['KeyboardInterrupt', 'Exception']", "['PeerGone', 'Exception']", "['GeneratorExit']",
     "['SystemExit']", "['f', 'candidate', 'Invalid', 'ValueError']", "['x' * 201, 'ValueError']"],
    ids=["cycle", "assertion-parent", "stop-iteration", "keyboard-interrupt", "peer-gone", "generator-exit",
         "system-exit", "test-names", "long-parent"],
)  # fmt: skip
def test_a_forged_lineage_is_never_more_than_the_program_could_raise(lineage):
    # Whatever the lineage, the test's `except Exception` catches the error the program raised (never a
    # BaseException that ends the judge's run), and a test expecting an unrelated error fails.
    program = LINEAGE.replace("LINEAGE", lineage) + "class Invalid(Exception):\n    pass\n"
    program += "def f(x):\n    raise Invalid('neg')\n"
    r = judged(
        program, "try:\n    f(-1)\nexcept Exception:\n    pass", "try:\n    f(-1)\nexcept KeyError:\n    pass"
    )
    assert r.tests[0].passed and not r.tests[1].passed and not r.passed, brief(r)


@pytest.mark.parametrize(
    "answer",
    ["['Invalid', 'ValueError']", "[7, ['ValueError']]", "['Invalid', ['x'] * 1_000_000 + ['Exception']]",
     "['Invalid', ['ValueError'], 'extra']", "[['Invalid'], ['ValueError']]", "['Invalid', [obj, 'Exception']]",
     "['in valid', ['ValueError']]", "['Invalid', ['SystemExit']]"],
    ids=["lineage-str", "name-int", "million", "three", "name-list", "handle", "no-identifier", "system-exit"],
)  # fmt: skip
def test_a_malformed_exists_answer_gives_no_class(answer):
    # The name stays the program's handle: `except Invalid` of a handle is a TypeError, and the test fails.
    program = lying(answer, "class Invalid(ValueError):\n    pass\ndef f(x):\n    return x\n")
    assert_fails(judged(program, EXPECTS_INVALID))


def test_a_program_raising_from_the_exists_request_does_not_satisfy_the_tests_except():
    # The except clause's own lookup raises the program's ValueError: it replaces the AssertionError, and
    # the test fails (as it would if the program's `Invalid` were a property that raises).
    program = LIE.replace("ANSWER", "(_ for _ in ()).throw(ValueError('lookup'))")
    program += "class Invalid(ValueError):\n    pass\ndef f(x):\n    return x\n"
    assert_fails(judged(program, EXPECTS_INVALID))


# -- datetime values --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ['"\\ud800"', '"\\u0000\\n\\r"', '"\\u202e' + "x" * 190 + '"', '""'],
    ids=["lone-surrogate", "control", "bidi", "empty"],
)
def test_a_time_zone_name_with_odd_characters_fails_cleanly(name):
    # The name reaches the test's failure message, and with it the judge's report.
    frame = '["r", {"dt": ["datetime", 2020, 1, 1, 0, 0, 0, 0, 0, [3600000000, NAME]]}]'.replace("NAME", name)
    program = RAW + f"def f():\n    send_raw({frame.encode()!r})\n    return 0\n"
    r = judged(
        program, "v = f()\nassert v.tzname() == 'UTC', v.tzname()", "v = f()\nassert str(v) == 'x', repr(v)"
    )
    assert_fails(r, "AssertionError")
    assert_judge_still_judges()


def test_a_frame_full_of_datetimes_is_decoded_and_fails():
    # ~250,000 aware datetimes with their own zone names, a 15 MB frame: rebuilt in linear time.
    item = '{"dt":["datetime",2020,1,1,0,0,0,0,0,[3600000000,"' + "z" * 20 + '"]]}'
    body = '["r", {"l": [' + ",".join([item] * 200_000) + "]}]"
    program = RAW + f"def f():\n    send_raw({body.encode()!r})\n    return 0\n"
    assert_fails(judged(program, "assert f() == 1"), "AssertionError")
    assert_judge_still_judges()


@pytest.mark.parametrize(
    "body",
    [b'{"dt": ["datetime", 2020, 1, 1, 0, 0, 0, 0, 2, null]}', b'{"dt": ["time", 0, 0, 0, 0, 0, [1, null], 3]}',
     b'{"dt": ["timezone", [86400000000, null]]}', b'{"dt": ["timezone", [0, null], null]}',
     b'{"dt": ["date", ' + b"9" * 4000 + b', 1, 1]}', b'{"dt": ["timedelta", 0, 0, ' + b"9" * 30 + b']}',
     b'{"dt": ["__class__", 1]}', b'{"dt": ["datetime", 2020, 1, 1, 0, 0, 0, 0, 0, [0, null, 1]]}'],
    ids=["fold-2", "extra-field", "full-day-offset", "zone-extra", "huge-year", "huge-micros", "dunder-kind",
         "zone-triple"],
)  # fmt: skip
def test_a_malformed_datetime_is_never_an_error_the_test_expects(body):
    program = RAW + "def f():\n    send_raw(b'[\"r\", ' + BODY + b']')\n    os._exit(0)\n"
    test = "try:\n    f()\nexcept (ValueError, TypeError, OverflowError, KeyError):\n    pass\nelse:\n    raise AssertionError"
    assert_fails(judged(program.replace("BODY", repr(body)), test), "program stopped answering")


def test_a_datetime_subclass_of_the_tests_own_crosses_as_the_plain_value():
    # The test's own subclass (a pandas-like Timestamp whose == says yes) reaches the program as a plain
    # datetime, and what comes back compares by value.
    setup = "import datetime\nclass Yes(datetime.date):\n    def __eq__(self, o):\n        return True\n"
    program = (
        "import datetime\ndef f(d):\n    return (type(d) is datetime.date, d + datetime.timedelta(days=1))\n"
    )
    r = judged(program, "plain, nxt = f(Yes(2020, 1, 1))\nassert plain and type(nxt) is datetime.date",
               "assert f(Yes(2020, 1, 1))[1] == datetime.date(2020, 1, 3)", setup=setup)  # fmt: skip
    assert r.tests[0].passed and not r.tests[1].passed, brief(r)


# -- numpy scalars ------------------------------------------------------------------------------------------
def test_a_numpy_scalar_whose_item_is_overridden_crosses_as_its_true_value():
    pytest.importorskip("numpy")
    program = (
        "import numpy as np\nclass Lie(np.float64):\n    def item(self):\n        return 2.0\n"
        "    def __eq__(self, o):\n        return True\n"
        "def f():\n    return Lie(1.0), np.longdouble('1e400'), np.clongdouble(1 + 2j), np.datetime64('2020-01-02')\n"
    )
    r = judged(program, "a, b, c, d = f()\nassert a == 1.0 and type(a) is float and b == float('inf')\n"
               "assert c == 1 + 2j\nimport datetime\nassert d == datetime.date(2020, 1, 2)",
               "assert f()[0] == 2.0")  # fmt: skip
    assert r.tests[0].passed and not r.tests[1].passed, brief(r)


def test_numpy_scalars_the_test_passes_cross_as_plain_values():
    pytest.importorskip("numpy")
    program = "def f(*xs):\n    return [type(x).__name__ for x in xs]\n"
    test = (
        "import numpy as np\n"
        "assert f(np.int64(3), np.float32(0.5), np.bool_(True), np.datetime64('2020-01-01')) == "
        "['int', 'float', 'bool', 'date']"
    )
    r = judged(program, test)
    assert r.passed, brief(r)
