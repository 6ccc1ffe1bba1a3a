"""Red team of what crosses the judge channel by value since session 33 (rpc.py, crossing.py): Fraction,
Decimal, range and namedtuples rebuilt by the judge, the program's exception classes rebuilt on their
builtin base, and arguments changed in place written back into the test's objects.

The program owns its end of the channel (`RAW` writes any frame; `FORGE` replaces what its side reports
as changed arguments), so each test gives a wrong program one trick aimed at these paths: values whose
rebuilding costs the judge far more than the frame (a range's length is a big-int division, `int()` of a
Decimal converts its digits in quadratic time), names big enough to fill the judge's memory or its report,
exception names the judge treats specially, and changes aimed at objects the call was never given. Each
must fail (never pass, never `sandbox_error`), and the judge must still serve correct verdicts afterwards.
"""

from __future__ import annotations

import builtins

import pytest
from redteam_kit import src

from codefoundry.sandbox import Judge, Limits, Status, crossing, execute

LIMITS = Limits(cpu_seconds=5, memory_mb=512)
RAW = src("""
    import os, sys
    rpc = sys.modules['codefoundry_rpc']
    def send_raw(body):
        os.write(4, len(body).to_bytes(4, 'big') + body)
""")
# Whatever the program's side reports as the call's changed arguments: CHANGES, a Python expression
# evaluated with `encode` (the program's encoder) in scope.
FORGE = src("""
    import sys
    rpc = sys.modules['codefoundry_rpc']
    rpc.crossing.snapshot = lambda pos, kw, encode: {0: ""}  # every call "changed" its arguments
    rpc.crossing.changed_arguments = lambda pos, kw, snap, encode: CHANGES
""")


def judged(program: str, *tests: str, entry_point: str = "f", setup: str = ""):
    return execute(program, judge=Judge(tests=tests, entry_point=entry_point, setup=setup), limits=LIMITS)


def forged(changes: str, body: str) -> str:
    return FORGE.replace("CHANGES", changes) + src(body)


def assert_fails(r, error: str = "") -> None:
    assert r.status is Status.FAILED and not r.passed, (r.status, r.message, r.tests)
    if error:
        assert any(error in (t.error or "") for t in r.tests), (error, r.tests)


def assert_judge_still_judges() -> None:
    """The next runs on this worker get correct verdicts: a correct program passes, a wrong one fails."""
    ok = judged("def f(x):\n    return x + 1\n", "assert f(1) == 2", "assert f(2) == 3")
    assert ok.passed, (ok.status, ok.message, ok.tests)
    bad = judged("def f(x):\n    return x\n", "assert f(1) == 2")
    assert_fails(bad)


def expects(call: str, error: str) -> str:
    """A test snippet that passes only if `call` raises `error`."""
    return f"try:\n    {call}\nexcept {error}:\n    pass\nelse:\n    raise AssertionError('no {error}')"


# -- values whose rebuilding costs far more than their frame ----------------------------------------------
def test_a_range_of_huge_ints_is_refused_before_its_length_is_computed():
    # range() computes its length, (stop - start) // step, at once: a big-int division, quadratic in the
    # size. 2**21 bits took 1.6 s, and a 16 MB frame holds 2**26: the judge was held for hours.
    program = "def f():\n    return range(0, 2**70000, 2**35000 + 1)\n"
    r = judged(program, "assert f() != 0")
    assert_fails(r, "range over 65536 bits")
    small = judged("def f():\n    return range(0, 2**60000, 3)\n", "assert f() == range(0, 2**60000, 3)")
    assert small.passed, (small.status, small.tests)


@pytest.mark.parametrize(
    "value",
    ["Decimal('1E+100000')", "Decimal('1E-100000')", "Decimal('9' * 30000)", "Decimal('-0.' + '1' * 30000)"],
    ids=["huge-exponent", "tiny-exponent", "many-digits", "many-decimals"],
)
def test_a_decimal_too_large_to_convert_cheaply_is_refused(value):
    # int() of a Decimal converts its digits to binary in quadratic time: int(Decimal('1E+400000')), a
    # 12-byte frame, held the judge 4.7 s in a test's `round(f())` (1E+100000000: hours).
    program = f"from decimal import Decimal\ndef f():\n    return {value}\n"
    r = judged(program, "assert round(f()) == 1")
    assert_fails(r, "Decimal over 20000 digits")
    ok = judged("from decimal import Decimal\ndef f():\n    return Decimal('1.' + '5' * 19000)\n",
                "assert round(f()) == 2")  # fmt: skip
    assert ok.passed, (ok.status, ok.tests)


def test_a_signaling_nan_inside_a_container_is_refused():
    program = "from decimal import Decimal\ndef f():\n    return [Decimal(1), {'k': Decimal('-sNaN')}]\n"
    test = (
        "from decimal import Decimal\ntry:\n    f() == [Decimal(1), {'k': 0}]\n"
        "except ArithmeticError:\n    pass"
    )
    assert_fails(judged(program, test), "signaling NaN")


@pytest.mark.parametrize(
    "body",
    [b'{"q": [1, 0]}', b'{"q": [true, 3]}', b'{"q": [1.5, 2]}', b'{"q": [1]}', b'{"rg": [0, 5, 0]}',
     b'{"rg": [0, 5]}', b'{"m": 5}', b'{"m": "1e"}', b'{"m": "1E+999999999999999999999"}'],
    ids=["zero-denominator", "bool", "float", "short-fraction", "zero-step", "short-range", "decimal-int",
         "decimal-syntax", "decimal-overflow"],
)  # fmt: skip
def test_a_malformed_value_is_not_the_exception_a_test_expects(body):
    # Fraction(1, 0) raises ZeroDivisionError, range(0, 5, 0) ValueError, Decimal('1e') InvalidOperation:
    # none of them may reach a test expecting that error of the call.
    program = RAW + "def f():\n    send_raw(b'[\"r\", ' + BODY + b']')\n    os._exit(0)\n"
    program = program.replace("BODY", repr(body))
    test = expects("f()", "(ZeroDivisionError, ValueError, TypeError, ArithmeticError)")
    assert_fails(judged(program, test), "program stopped answering")


# -- names that fill the judge's memory or its report -----------------------------------------------------
def test_an_exception_class_with_a_huge_name_is_no_sandbox_error():
    # The judge built a class of that name: the test's outcome ("NAME: message") held all 9 MB of it, the
    # report passed the 8 MB the zygote reads, and the run was a sandbox_error. The judge kept 256 such
    # classes across runs (~32 MB each: past its 2 GB once some 60 runs had sent one).
    program = "E = type('E' * 9_000_000, (ValueError,), {})\ndef f():\n    raise E('boom')\n"
    r = judged(program, "assert f() == 1")
    assert_fails(r, "RemoteError")
    assert len(r.tests[0].error) < 1000, len(r.tests[0].error)
    assert_judge_still_judges()


@pytest.mark.parametrize("where", ["typename", "field"])
def test_a_namedtuple_with_huge_names_is_refused(where):
    # collections.namedtuple() of 256 field names of 60,000 characters took 0.8 s and 123 MB, and the
    # judge kept 256 such classes across runs: past its 2 GB after some 16 runs, and every later run
    # (a correct one too) failed with MemoryError.
    name, field = ("P" * 100_000, "x") if where == "typename" else ("P", "x" * 100_000)
    frame = f'["r", {{"n": ["{name}", ["{field}"], [1]]}}]'.encode()
    program = RAW + f"def f():\n    send_raw({frame!r})\n    os._exit(0)\n"
    assert_fails(judged(program, "assert f() == (1,)"), "malformed namedtuple")
    # The honest program's side sends such a namedtuple as the plain tuple it is.
    honest = (
        f"import collections\nP = collections.namedtuple({name!r}, [{field!r}])\ndef f():\n    return P(1)\n"
    )
    r = judged(honest, "assert f() == (1,) and type(f()) is tuple")
    assert r.passed, (r.status, r.tests)


def test_names_the_crossing_refuses():
    assert crossing.namedtuple_fields("P", ("x", "y")) == ("x", "y")
    assert crossing.namedtuple_fields("P" * (crossing.MAX_NAME + 1), ("x",)) is None
    assert crossing.namedtuple_fields("P", ("x" * (crossing.MAX_NAME + 1),)) is None
    assert crossing.namedtuple_fields("P", ("_make",)) is None
    assert crossing.namedtuple_fields("P", ("x", "x")) is None
    error = crossing.rebuild_exception("E" * 10_000, "m", "ValueError")
    assert type(error) is crossing.RemoteError and len(str(error)) < 500, type(error)


@pytest.mark.parametrize("base", sorted(crossing.SAFE_EXCEPTIONS))
def test_every_builtin_base_rebuilds_a_program_exception_without_raising(base):
    # A TypeError out of building the class or its instance would reach a test expecting TypeError.
    error = crossing.rebuild_exception("Invalid", "message", base)
    assert isinstance(error, getattr(builtins, base)), type(error)


# -- exception names the judge treats specially -------------------------------------------------------------
SPECIAL = ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseExceptionGroup", "StopAsyncIteration",
           "PeerGone"]  # fmt: skip


@pytest.mark.parametrize("name", SPECIAL)
def test_a_program_exception_named_like_a_special_one_is_only_its_base(name):
    # The program's `class SystemExit(Exception)`: a judge-made Exception named SystemExit, which the
    # test's `except SystemExit` (the builtin) does not catch.
    program = f"class {name}(Exception):\n    pass\ndef f():\n    raise {name}('x')\n"
    test = f"try:\n    f()\nexcept {name if name != 'PeerGone' else 'LookupError'}:\n    pass"
    assert_fails(judged(program, test), f"{name}: x")


def lying_about(name: str, base: object) -> str:
    """A program raising its class `name`, whose side reports `base` as its lineage (its nearest builtin
    base, for a string)."""
    return (
        f"import sys\nsys.modules['codefoundry_rpc'].crossing.exception_lineage = lambda t: {base!r}\n"
        f"class {name}(Exception):\n    pass\ndef f():\n    raise {name}('x')\n"
    )


@pytest.mark.parametrize("base", [*SPECIAL, "BaseException", "object", "", 7, None])
def test_a_forged_base_that_is_no_safe_exception_is_a_remote_error(base):
    r = judged(lying_about("Mine", base), expects("f()", "Exception"), "f()")
    assert r.tests[0].passed and r.tests[1].error == "RemoteError: Mine: x", (r.status, r.tests)


@pytest.mark.parametrize(
    "name, base, expected",
    [("AssertionError", "ValueError", "ValueError"), ("Stop", "StopIteration", "StopIteration"),
     ("Invalid", "UnicodeDecodeError", "TypeError"), ("Group", "ExceptionGroup", "TypeError")],
    ids=["builtin-name", "stop-iteration-base", "unicode-base-not-typeerror", "group-base-not-typeerror"],
)  # fmt: skip
def test_a_forged_name_and_base_are_not_the_exception_the_test_expects(name, base, expected):
    assert_fails(judged(lying_about(name, base), expects("f()", expected)))
    assert_judge_still_judges()


def test_a_stop_iteration_subclass_cannot_end_a_tests_map_early():
    program = "class Done(StopIteration):\n    pass\ndef f(x):\n    raise Done\n"
    assert_fails(judged(program, "assert all(map(lambda x: f(x) == x, [1, 2]))"), "RuntimeError")


# -- namedtuples that claim more than they are -------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [b'["P", ["_fields"], [1]]', b'["P", ["_make"], [1]]', b'["P", ["x"], [1, 2]]',
     b'["P", ["x", "x"], [1, 2]]', b'["class", ["x"], [1]]', b'["P", ["def"], [1]]', b'["P", [1], [1]]',
     b'["P", ["x"], 1]'],
    ids=["_fields", "_make", "too-many-items", "duplicate", "keyword-type", "keyword-field", "int-field",
         "items-not-a-list"],
)  # fmt: skip
def test_a_forged_namedtuple_is_malformed(body):
    program = RAW + "def f():\n    send_raw(b'[\"r\", {\"n\": ' + BODY + b'}]')\n    os._exit(0)\n"
    assert_fails(judged(program.replace("BODY", repr(body)), "assert f() == (1,)"), "malformed")


def test_namedtuple_fields_named_like_tuple_methods_do_not_make_a_wrong_answer_pass():
    # `count` and `index` are fields the judge's class has as properties, shadowing tuple's methods; the
    # values compare as the tuple they are.
    frame = b'["r", {"n": ["P", ["count", "index"], [0, 0]]}]'
    program = RAW + f"def f():\n    send_raw({frame!r})\n    return 0\n"
    assert_fails(judged(program, "r = f()\nassert r == (1, 2) or r.count(1) == 1"))


# -- arguments changed in place --------------------------------------------------------------------------
def test_a_change_reaches_the_argument_only_not_an_equal_expected_value():
    program = forged("[[0, encode([9, 9, 9])]]", "def f(xs):\n    return None\n")
    test = "EXPECTED = [1, 2, 3]\nx = list(EXPECTED)\nf(x)\nassert x == [9, 9, 9] and EXPECTED == [1, 2, 3]"
    assert judged(program, test).passed  # the argument the call got takes the change...
    assert_fails(judged(program, "EXPECTED = [1, 2, 3]\nf(list(EXPECTED))\nassert EXPECTED == [9, 9, 9]"))


@pytest.mark.parametrize(
    "arg, changes",
    [("(3, 1, 2)", "[[0, encode([1, 2, 3])]]"), ("frozenset({1})", "[[0, encode({1})]]"),
     ("'abc'", "[[0, encode('abc')]]"), ("g()", "[[0, encode([1, 2, 3])]]"),
     ("[3, 1, 2]", "[[True, encode([1, 2, 3])]]"), ("[3, 1, 2]", "[[-1, encode([1, 2, 3])]]"),
     ("[3, 1, 2]", "[[0, encode((1, 2, 3))]]"), ("[3, 1, 2]", "[[0, encode([1, 2, 3]), 1]]"),
     ("[3, 1, 2]", "{'0': encode([1, 2, 3])}"), ("[3, 1, 2]", "[[0, {'zz': 1}]]")],
    ids=["tuple", "frozenset", "str", "remote", "bool-key", "negative-key", "list-to-tuple", "triple",
         "dict-of-changes", "bad-tag"],
)  # fmt: skip
def test_a_change_to_what_cannot_take_it_is_a_malformed_reply(arg, changes):
    program = forged(changes, "class G:\n    pass\ndef g():\n    return G()\ndef f(xs):\n    return 1\n")
    test = f"x = {arg}\nassert f(x) == 1\nassert x == [1, 2, 3] or x == (1, 2, 3)"
    assert_fails(judged(program, test), "program stopped answering")


def test_a_set_changed_to_program_handles_that_equal_everything_fails():
    yes = (
        "class Yes:\n    def __eq__(self, o):\n        return True\n"
        "    def __hash__(self):\n        return 1\n"
    )
    program = forged("[[0, encode({Yes()})], [1, encode([Yes(), Yes()])], ['d', encode({Yes(): Yes()})]]",
                     yes + "def f(s, xs, d):\n    return None\n")  # fmt: skip
    for check in ("s == {1}", "{1} == s", "xs == [1, 2]", "d == {1: 2}", "1 in s", "d[1] == 2"):
        test = f"s, xs, d = {{5}}, [5], {{5: 5}}\nf(s, xs, d=d)\nassert {check}"
        assert_fails(judged(program, test))


def test_a_huge_change_list_is_applied_in_linear_time():
    # 400,000 changes, each replacing the list: the judge applies them one by one (a frame of ~6 MB).
    program = forged("[[0, encode([7])]] * 400_000", "def f(xs):\n    return 1\n")
    r = judged(program, "x = [0]\nassert f(x) == 1\nassert x == [0]")
    assert_fails(r, "AssertionError")
    assert_judge_still_judges()


def test_a_change_nested_too_deeply_is_malformed():
    nest = "NEST = {'l': []}\nfor _ in range(150):\n    NEST = {'l': [NEST]}\n"
    program = forged("[[0, NEST]]", nest + "def f(xs):\n    return 1\n")
    assert_fails(judged(program, "x = [0]\nassert f(x) == 1"), "program stopped answering")


def test_a_callback_cannot_carry_changes_into_the_judges_own_objects():
    # The test hands the program `seen.append`: the program may call it, and `seen` gets what it was
    # called with; a change sent back for f's own argument (the bound method) is refused, and the
    # program's later changes to the list it passed do not reach `seen`.
    body = "def f(cb):\n    xs = [1, 2]\n    cb(xs)\n    xs.append(3)\n    cb(cb)\n    return len(xs)\n"
    honest = judged(
        src(body), "seen = []\nassert f(seen.append) == 3\nassert seen[0] == [1, 2] and len(seen) == 2"
    )
    assert honest.passed, (honest.status, honest.tests)
    program = forged("[[0, encode([1, 2, 3])]]", body)
    assert_fails(judged(program, "seen = []\nf(seen.append)"), "program stopped answering")


def test_a_callback_the_program_calls_reentrantly_only_changes_its_own_arguments():
    # Judge -> f(x, cb) -> program calls cb(ys) -> cb calls g(z) -> program; each reply's changes apply to
    # that call's arguments only (z), never to the outer call's (x) or the callback's (ys).
    body = "def g(z):\n    z.append('g')\ndef f(x, cb):\n    ys = ['y']\n    cb(ys)\n    return ys\n"
    test = (
        "x, z, G = ['x'], ['z'], g\n"  # G: a function the test defines sees its globals, not the program's
        "def cb(ys):\n    G(z)\n    ys.append('cb')\n"
        "assert f(x, cb) == ['y', 'cb']\nassert x == ['x'] and z == ['z', 'g']"
    )
    r = judged(src(body), test)
    assert r.passed, (r.status, r.tests)


@pytest.mark.parametrize(
    "make, check",
    [("collections.Counter('ab')", "x == {'a': 1, 'b': 1, 'z': 1}"),
     ("collections.defaultdict(list)", "x['k'] == [1] and x['new'] == []"),
     ("collections.OrderedDict(a=1)", "list(x) == ['a', 'z']"),
     ("Tracked([3, 1, 2])", "x == [1, 2, 3] and type(x) is Tracked")],
    ids=["counter", "defaultdict", "ordereddict", "list-subclass"],
)  # fmt: skip
def test_a_correct_program_changing_a_dict_or_list_subclass_argument_passes(make, check):
    # They cross as plain dicts and lists, so the program's side sends their changes like any other; the
    # judge took each for a forgery ("a change of an argument's type") and the program for one that
    # stopped answering: this test and every later one failed.
    program = (
        "def f(x):\n    if isinstance(x, dict):\n        x.setdefault('k', []).append(1) if 'a' not in x "
        "else x.__setitem__('z', 1)\n    else:\n        x.sort()\n"
    )
    setup = "import collections\nclass Tracked(list):\n    pass\n"
    r = judged(program, f"x = {make}\nf(x)\nassert {check}", "assert f([2, 1]) is None", setup=setup)
    assert r.passed, (r.status, r.tests)
