"""Verdict integrity, part 3: the program's end of the judge channel (helpers in integrity_kit.py).

A judged program serves the judge's calls over a pipe (rpc.py), and it owns that end completely: it can
write any bytes, reply out of turn, make requests of its own while a call is pending, and answer the
judge's questions (names, hashes, lengths, methods of the objects it returns) as it likes. Each test below
gives a WRONG entry point plus one such trick, aimed at a test shape real benchmarks use (HumanEval-style
asserts, MBPP-style `assert f(x) == y` and `math.isclose`, tests that expect an exception, tests that
iterate results or use `in`), so the only way for it to pass is to defeat the judge: malformed or
oversized frames, tags and handles the judge must refuse, nested requests aimed at the judge's internals,
exceptions rebuilt by name, and values whose behaviour is answered by the program.
"""

from __future__ import annotations

import pytest
from integrity_kit import ADD, assert_not_forged, brief, judged, src

from codefoundry.sandbox import Judge, Status

# Program-side helpers: write a raw frame on the reply fd (4), and reach the program's own Channel (the
# caller of the entry point is Channel._perform, whose `self` it is) to make nested requests of the judge.
RAW = src("""
    import os, sys
    def send_raw(body):
        os.write(4, len(body).to_bytes(4, 'big') + body)
    def channel():
        return sys._getframe(2).f_locals['self']
""")


def expects(call: str, error: str) -> str:
    """A test snippet that passes only if `call` raises `error`."""
    return f"try:\n    {call}\nexcept {error}:\n    pass\nelse:\n    raise AssertionError('no {error}')"


def add_judge(*tests: str) -> Judge:
    return Judge(tests=tests, entry_point="add")


# -- malformed frames: never read as an exception the call raised ------------------------------------------------
MALFORMED_VALUES = {
    "huge_decimal_int": (b'["r", {"i": "' + b"9" * 5000 + b'"}]', "ValueError"),
    "int_tag_of_a_list": (b'["r", {"i": [1]}]', "TypeError"),
    "int_tag_of_nan": (b'["r", {"i": NaN}]', "ValueError"),
    "int_tag_of_infinity": (b'["r", {"i": Infinity}]', "OverflowError"),
    "bad_hex_bytes": (b'["r", {"b": "zz"}]', "ValueError"),
    "dict_body_not_a_list": (b'["r", {"d": 5}]', "TypeError"),
    "dict_pair_of_one": (b'["r", {"d": [["a"]]}]', "ValueError"),
    "unhashable_set_item": (b'["r", {"s": [{"l": [1]}]}]', "TypeError"),
    "unhashable_dict_key": (b'["r", {"d": [[{"l": [1]}, 1]]}]', "TypeError"),
    "complex_of_ints": (b'["r", {"c": [1, 2]}]', "TypeError"),
    "complex_short": (b'["r", {"c": []}]', "IndexError"),
    "unknown_tag": (b'["r", {"zz": 1}]', "KeyError"),
    "type_tag_object": (b'["r", {"y": "object"}]', "KeyError"),
    "handle_float_id": (b'["r", {"h": 1.5, "o": "c"}]', "TypeError"),
    "handle_unknown_judge_id": (b'["r", {"h": 987654, "o": "j"}]', "KeyError"),
    "handle_bad_owner": (b'["r", {"h": 1, "o": "x"}]', "ValueError"),
    "nested_too_deep_tags": (b'["r", ' + b'{"l": [' * 150 + b"1" + b"]}" * 150 + b"]", "RecursionError"),
    "reply_too_long": (b'["r", 3, 4]', "ValueError"),
    "error_too_short": (b'["e", "ValueError"]', "ValueError"),
    "not_a_list": (b'{"r": 3}', "KeyError"),
    "empty_body": (b"", "ValueError"),
    "non_utf8": (b'["r", "\xff\xfe"]', "UnicodeDecodeError"),
    "lone_surrogate_escape_is_just_a_str": (b'["r", "\\ud800"]', "UnicodeError"),
}


@pytest.mark.parametrize("case", list(MALFORMED_VALUES), ids=list(MALFORMED_VALUES))
def test_malformed_reply_is_not_the_exception_the_test_expects(case):
    """The call is answered with a frame the judge cannot (or must not) take as a value, and the program
    exits; the test expects exactly the exception that rebuilding that value would raise."""
    body, error = MALFORMED_VALUES[case]
    prog = RAW + src(f"""
        def add(a, b):
            send_raw({body!r})
            os._exit(0)
    """)
    assert_not_forged(judged(prog, add_judge(expects("add(1, 2)", error))), Status.FAILED)


@pytest.mark.parametrize("case", ["huge_decimal_int", "complex_of_ints", "unhashable_set_item"])
def test_malformed_reply_from_a_program_that_keeps_serving(case):
    """As above, but the program does not exit: it keeps answering later calls (wrongly)."""
    body, error = MALFORMED_VALUES[case]
    prog = RAW + src(f"""
        def add(a, b):
            if a == 1:
                send_raw({body!r})
                return 'this reply is read as the next call'
            return a - b
    """)
    judge = add_judge(expects("add(1, 2)", error), "assert add(5, 5) == 10 or True")
    assert_not_forged(judged(prog, judge), Status.FAILED)


@pytest.mark.parametrize("error", ["RecursionError", "RuntimeError"])
def test_deeply_nested_json_reply_cannot_raise_what_the_test_expects(error):
    """A reply frame whose JSON nests deeper than the C decoder's recursion limit: json raises
    RecursionError (a RuntimeError, not a ValueError), which must read as a malformed message."""
    prog = RAW + src("""
        def add(a, b):
            send_raw(b'["r", ' + b'[' * 100_000 + b']' * 100_000 + b']')
            os._exit(0)
    """)
    assert_not_forged(judged(prog, add_judge(expects("add(1, 2)", error))), Status.FAILED)


def test_oversized_frame_header():
    prog = RAW + src("""
        def add(a, b):
            os.write(4, (0xFFFFFFF0).to_bytes(4, 'big') + b'["r", 3]')
            os._exit(0)
    """)
    judge = add_judge(expects("add(1, 2)", "MemoryError"), "assert add(2, 2) == 4")
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_split_concatenated_and_early_frames():
    """Replies written before any request, split byte by byte, with garbage glued after them."""
    prog = RAW + src("""
        import json, time
        def frame(obj):
            body = json.dumps(obj).encode()
            return len(body).to_bytes(4, 'big') + body
        os.write(4, frame(['r', -1]))  # before any request: read as the first call's reply
        def add(a, b):
            data = frame(['r', a - b]) + frame(['r', 'extra']) + b'\\x00\\x00\\x00\\x02{]'
            for i in range(len(data)):
                os.write(4, data[i:i + 1])
            return a - b
    """)
    assert_not_forged(judged(prog), Status.FAILED)


# -- handles and type tags in replies ---------------------------------------------------------------------------
def test_judge_owned_handles_returned_as_the_result():
    """The program asks the judge for objects of its own (an iterator over a list holding the expected
    answer, a generic alias, the test's own callback) and returns them as the result: the judge then
    compares its own objects, none of which equals the expected plain value."""
    judge = Judge(
        tests=("assert apply(lambda v: v + 1, 1) == 2", "assert apply(lambda v: v * 2, 3) == 6",
               "assert apply(lambda v: [v], 4) == [4]"),
        entry_point="apply",
    )  # fmt: skip
    prog = RAW + src("""
        n = [0]
        def apply(f, x):
            ch = channel()
            n[0] += 1
            if n[0] == 1:
                return ch.request('iter', {'l': [2]})
            if n[0] == 2:
                return ch.request('getitem', {'y': 'list'}, {'y': 'int'})
            return f
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_type_tags_for_non_plain_types_are_refused():
    prog = RAW + src("""
        def add(a, b):
            send_raw(b'["r", {"y": "type"}]')
            os._exit(0)
    """)
    judge = add_judge("assert add(1, 2) != 3 and add is not None")
    assert_not_forged(judged(prog, judge), Status.FAILED)


# -- nested requests from the program while a call is pending ---------------------------------------------------
NESTED = [
    ("call", ["name", "eval"], {"l": ["1"]}, {"d": []}),
    ("getitem", ["name", "__builtins__"], "eval"),
    ("getitem", ["name", "outcomes"], 0),
    ("call", ["name", "add"], {"l": [1, 2]}, {"d": []}),
    ("getattr", {"y": "int"}, "__subclasses__"),
    ("getattr", {"y": "int"}, "mro"),
    ("setattr", {"y": "int"}, "real", 1),
    ("exists", ["name", "ns"]),
    ("eq", {"y": "int"}, {"y": "int"}),
    ("delitem", {"d": [["a", 1]]}, "a"),
    ("call", {"h": 1, "o": "j"}, {"l": []}, {"d": []}),
    ("call", {"h": 0, "o": "j"}, {"l": []}, {"d": []}),
    ("getattr", {"h": 1, "o": "j"}, "gi_frame"),
]


def test_nested_requests_cannot_reach_the_judge_internals():
    """While `add` is being called the program makes requests of the judge aimed at its names, builtins,
    test namespace and types; every one must be refused (an exception comes back), and the run fails."""
    prog = RAW + src(f"""
        NESTED = {NESTED!r}
        def add(a, b):
            ch = channel()
            for req in NESTED:
                try:
                    value = ch.request(*req)
                except Exception as e:
                    print('refused', req[0], type(e).__name__, flush=True)
                else:
                    print('ANSWERED', req, repr(value)[:80], flush=True)
            return a - b
    """)
    r = judged(prog)
    assert "ANSWERED" not in r.stdout, brief(r)
    assert_not_forged(r, Status.FAILED)


def test_nested_request_errors_do_not_leak_into_the_test():
    """A nested request that fails in the judge is answered to the program; it must not raise in the
    test code (which here expects a ZeroDivisionError the program never raises)."""
    prog = RAW + src("""
        def add(a, b):
            ch = channel()
            for _ in range(3):
                try:
                    ch.request('call', {'y': 'int'}, {'l': ['x']}, {'d': []})  # ValueError in the judge
                except Exception:
                    pass
            send_raw(b'["q", "call"]')  # a request without a target
            return a - b
    """)
    assert_not_forged(judged(prog, add_judge(expects("add(1, 0)", "ValueError"))), Status.FAILED)


def test_hash_request_during_decoding_is_not_the_calls_exception():
    """The result is a dict keyed by a program object: decoding it makes the judge ask the program for the
    key's hash, which raises KeyError this time (it did not when the program built the dict). That is no
    KeyError raised by the call."""
    prog = src("""
        class Key:
            hashed = 0
            def __hash__(self):  # fine once, in the program; a KeyError when the judge asks
                Key.hashed += 1
                if Key.hashed > 1:
                    raise KeyError('hash')
                return 1
        def add(a, b):
            return {Key(): 1}
    """)
    assert_not_forged(judged(prog, add_judge(expects("add(1, 2)", "KeyError"))), Status.FAILED)


# -- exceptions rebuilt by name ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raise_",
    ["UnicodeDecodeError('utf-8', b'\\xff', 0, 1, 'bad')", "UnicodeEncodeError('ascii', 'x', 0, 1, 'bad')",
     "UnicodeTranslateError('x', 0, 1, 'bad')", "ExceptionGroup('many', [ValueError(1)])"],
    ids=["UnicodeDecodeError", "UnicodeEncodeError", "UnicodeTranslateError", "ExceptionGroup"],
)  # fmt: skip
def test_exception_that_cannot_be_rebuilt_from_a_message_is_no_typeerror(raise_):
    """The program raises a builtin exception whose constructor needs more than a message; rebuilding it
    in the judge as `Name(message)` raises TypeError, which a test expecting TypeError must not take for
    the call's own exception (in plain Python the test fails)."""
    prog = f"def add(a, b):\n    raise {raise_}\n"
    assert_not_forged(judged(prog, add_judge(expects("add(None, 1)", "TypeError"))), Status.FAILED)


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "StopAsyncIteration"])
def test_base_exceptions_by_name_are_not_rebuilt(name):
    """A reply naming an exception the judge treats specially arrives as a RemoteError; a test that lets
    only that exception through (here: `except Exception` re-raises) fails."""
    prog = RAW + src(f"""
        def add(a, b):
            send_raw(b'["e", "{name}", "x"]')
            return 0
    """)
    test = f"try:\n    add(1, 2)\nexcept {name}:\n    pass\nexcept Exception:\n    raise AssertionError('caught')"
    assert_not_forged(judged(prog, add_judge(test)), Status.FAILED)


STOP_SHAPES = {
    "all_map": "assert all(map(lambda c: add(*c[0]) == c[1], CASES))",
    "not_any_map": "assert not any(map(lambda c: add(*c[0]) != c[1], CASES))",
    "empty_filter": "assert not list(filter(lambda c: add(*c[0]) != c[1], CASES))",
    "starmap": "import itertools\nassert all(itertools.starmap(lambda args, want: add(*args) == want, CASES))",
}


@pytest.mark.parametrize("shape", list(STOP_SHAPES), ids=list(STOP_SHAPES))
def test_stop_iteration_from_the_entry_point_inside_map(shape):
    """`all(map(check, cases))`: a StopIteration raised by the call would end `map` early, and `all` of
    nothing is true. Python turns it into RuntimeError only in generators (PEP 479); the judge does so for
    every call but `next`."""
    prog = "def add(a, b):\n    raise StopIteration\n"
    judge = Judge(tests=(STOP_SHAPES[shape],), entry_point="add", setup="CASES = [((1, 2), 3), ((2, 2), 4)]")
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_stop_iteration_from_the_entry_point_inside_a_generator_expression():
    """The same shape with a generator expression: PEP 479 turns the StopIteration into RuntimeError."""
    prog = "def add(a, b):\n    raise StopIteration\n"
    judge = add_judge("assert all(add(*c[0]) == c[1] for c in [((1, 2), 3), ((2, 2), 4)])")
    assert_not_forged(judged(prog, judge), Status.FAILED)


# -- comparisons and checks against handles ---------------------------------------------------------------------
YES = src("""
    class Yes:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __hash__(self): return hash(3)
        def __bool__(self): return True
        def __lt__(self, other): return False
        __le__ = __gt__ = __ge__ = __eq__
        def __sub__(self, other): return 0.0
        __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __sub__
        def __abs__(self): return 0.0
        def __float__(self): return 3.0
        def __round__(self, n=0): return 3
        def __iter__(self): return iter([])
        def __len__(self): return 0
        def __int__(self): return 3
        def __index__(self): return 3
        def __str__(self): return '3'
    def add(a, b):
        return Yes()
""")
SHAPES = {
    "in_tuple": "assert add(1, 2) in (3,)",
    "in_set": "assert add(1, 2) in {3}",
    "list_eq": "assert [add(1, 2)] == [3]",
    "set_eq": "assert {add(1, 2)} == {3}",
    "dict_value_eq": "assert {'k': add(1, 2)} == {'k': 3}",
    "reflected_eq": "assert 3 == add(1, 2)",
    "not_ne": "assert not (add(1, 2) != 3)",
    "dunder_eq_call": "assert add(1, 2).__eq__(3) is True",
    "operator_eq": "import operator\nassert operator.eq(add(1, 2), 3)",
    "float_tolerance": "assert abs(add(1, 2) - 3) < 1e-6",
    "float_tolerance_reflected": "assert abs(3 - add(1, 2)) < 1e-6",
    "isclose_exact_twice": "import math\nassert math.isclose(add(1, 2), 3) and math.isclose(add(2, 2), 4)",
    "between": "assert 2 < add(1, 2) < 4",
    "round": "assert round(add(1, 2)) == 3",
    "list_count": "assert [3].count(add(1, 2)) == 1",
    "list_index": "assert [3].index(add(1, 2)) == 0",
    "sorted_pair": "assert sorted([add(1, 2), 3]) == [3, 3]",
    "max_pair": "assert max(add(1, 2), 3) == 3 and max(3, add(1, 2)) == 3",
    "isinstance": "assert isinstance(add(1, 2), int) and add(1, 2) == 3",
    "unittest_equal": "import unittest\nunittest.TestCase().assertEqual(add(1, 2), 3)",
    "unittest_almost_equal": "import unittest\nunittest.TestCase().assertAlmostEqual(add(1, 2), 3.0)",
    "zip_strict": "assert all(x == y for x, y in zip(add(1, 2), [3], strict=True))",
    "str_and_value": "assert str(add(1, 2)) == '3' and add(2, 2) == 4",
    "counter_eq": "from collections import Counter\nassert Counter([add(1, 2)]) == Counter([3])",
    "fraction_eq": "from fractions import Fraction\nassert Fraction(3) == add(1, 2)",
    "decimal_eq": "from decimal import Decimal\nassert Decimal(3) == add(1, 2)",
}


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_handle_compared_in_common_test_shapes(shape):
    """The result is an object that says yes to everything, compared in the ways real tests compare."""
    assert_not_forged(judged(YES, add_judge(SHAPES[shape])))


def test_contains_on_a_handle_sees_the_expected_item():
    """`assert expected in result`: forwarding `in` would hand the program the expected item, and an object
    whose __contains__ always says yes would pass. The judge iterates the handle instead and compares
    here (`==` is never forwarded either)."""
    judge = Judge(
        tests=("assert 'HELLO' in shout('hello')", "assert 'ABC' in shout('abc')"), entry_point="shout"
    )
    prog = src("""
        class Everything:
            def __contains__(self, item):
                return True
        def shout(s):
            return Everything()
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


@pytest.mark.xfail(
    strict=True,
    reason="not defended (zygote.py's threat model): methods a test calls on an object the program "
    "returned run in the program, with the test's arguments; class-based tasks need that",
)
def test_method_on_a_handle_sees_the_expected_argument():
    """`assert result.startswith(expected)`: a method call on a handle is answered by the program, which
    sees the expected value as an argument and says yes."""
    judge = Judge(
        tests=("assert shout('hello').startswith('HELLO')", "assert shout('abc').endswith('ABC')"),
        entry_point="shout",
    )
    prog = src("""
        class Anything:
            def startswith(self, prefix): return True
            def endswith(self, suffix): return True
        def shout(s):
            return Anything()
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_assert_set_equal_leaks_the_expected_set_to_a_handle():
    """unittest's assertSetEqual calls `first.difference(second)`, handing the program the expected set,
    then iterates `first`: the program answers the first with nothing and echoes nothing back."""
    judge = Judge(
        tests=("import unittest\nunittest.TestCase().assertSetEqual(evens(6), {0, 2, 4})",
               "import unittest\nunittest.TestCase().assertSetEqual(evens(3), {0, 2})"),
        entry_point="evens",
    )  # fmt: skip
    prog = src("""
        class Mirror:
            def difference(self, other):
                return set()
            def __iter__(self):
                return iter(())
        def evens(n):
            return Mirror()
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_iteration_over_a_handle_yields_plain_values_only():
    """`sorted(result) == expected` and `list(result) == expected`: the items come over as plain data,
    so items that say yes to everything become plain ints (or handles, which compare false)."""
    judge = Judge(
        tests=("assert sorted(pair(1)) == [1, 2]", "assert list(pair(5)) == [5, 6]",
               "assert set(pair(7)) == {7, 8}", "assert tuple(pair(0)) == (0, 1)"),
        entry_point="pair",
    )  # fmt: skip
    prog = YES + src("""
        class AlwaysEq(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        class Seq:
            def __iter__(self): return iter([AlwaysEq(0), Yes()])
            def __len__(self): return 2
        def pair(n):
            return Seq()
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


# -- names the tests use without defining them -------------------------------------------------------------------
def test_stdlib_module_name_the_tests_do_not_import():
    """MBPP-style tests use `math.isclose` without importing math (the reference solution does). Resolved
    to the program's object of that name, the program's own `math`, whose isclose it has replaced, would
    answer the comparison: the judge uses its own `math`."""
    judge = Judge(
        tests=("assert math.isclose(area(1), 3.141592653589793, rel_tol=0.001)",
               "assert math.isclose(area(2), 12.566370614359172, rel_tol=0.001)"),
        entry_point="area",
    )  # fmt: skip
    prog = src("""
        import math
        math.isclose = lambda *a, **k: True
        def area(r):
            return 0.0
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


# -- objects the tests hand over ------------------------------------------------------------------------------------
def test_public_method_of_a_test_object_replaced_through_setattr():
    """A test class's instance is handed to the program, which may set its public fields (a linked-list
    node's `next`); setting a field named like the method the test then checks with would shadow it with a
    program callable that says yes, so setattr over a method is refused."""
    judge = Judge(
        tests=(src("""
            class Box:
                def __init__(self, v):
                    self.v = v
                def holds(self, expected):
                    return self.v == expected
            b = Box(1)
            bump(b)
            assert b.holds(2)
        """),),
        entry_point="bump",
    )  # fmt: skip
    prog = src("""
        def yes(*a, **k):
            return True
        def bump(box):
            box.holds = yes
    """)
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_stopping_is_not_an_exception_the_test_can_catch():
    """A test that expects the call to raise (`except Exception`): the program simply exits mid-call. "The
    program stopped answering" must not be an Exception test code can catch and take as the raise."""
    prog = "import os\ndef add(a, b):\n    os._exit(0)\n"
    judge = add_judge(expects("add(-1, 1)", "Exception"), expects("add(None, 1)", "BaseException"))
    r = judged(prog, judge)
    assert_not_forged(r)
    assert r.tests_passed < 2, brief(r)


def test_baseline_add_judge_still_rejects_wrong():
    assert_not_forged(judged("def add(a, b):\n    return a - b\n", ADD), Status.FAILED)
