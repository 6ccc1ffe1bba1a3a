"""numpy arrays a judged solution returns, and those its tests pass it, cross the judge channel by value
(session 35): exactly `numpy.ndarray`, of a dtype whose bytes are its values, rebuilt by the receiver's own
numpy from dtype, shape and bytes. They were handles, whose comparisons with the judge's arrays are false,
so `(f(x) == expected).all()` failed a correct solution.

The red team's program owns its end of the channel (`redteam_kit.sending`), so every array the judge
rebuilds is checked there: each trick must fail (never pass, never `sandbox_error`), and the judge must
still serve correct verdicts afterwards. Arrays whose behaviour is the program's (subclasses, object
dtype) stay handles, whose comparisons with the test's values are false.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redteam_kit import MUST_RAISE, assert_fails, assert_passes, brief, sending, src

from codefoundry.sandbox import Judge, Limits, Status, crossing, execute, rpc

np = pytest.importorskip("numpy")

LIMITS = Limits(cpu_seconds=5, memory_mb=512)
NP = "import numpy as np\n"
# Test code: the value the judge holds is its own numpy's ndarray, not a handle.
IS_ARRAY = "assert type(a) is np.ndarray and a.flags.writeable and a.flags.c_contiguous, type(a)\n"


def judged(program: str, *tests: str, setup: str = ""):
    return execute(program, judge=Judge(tests=tests, entry_point="f", setup=setup), limits=LIMITS)


def assert_judge_still_judges() -> None:
    ok = judged(NP + "def f(n):\n    return np.arange(n)\n", NP + "assert (f(3) == np.arange(3)).all()")
    assert_passes(ok)
    assert_fails(
        judged(NP + "def f(n):\n    return np.ones(n)\n", NP + "assert (f(3) == np.arange(3)).all()")
    )


# -- correct solutions ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "made, check",
    [
        ("np.arange(6).reshape(2, 3)", "a.dtype == np.int64 and a.shape == (2, 3) and (a == [[0, 1, 2], [3, 4, 5]]).all()"),
        ("np.array(7.5)", "a.shape == () and a == 7.5 and a.dtype == np.float64"),
        ("np.zeros((0, 3), dtype=np.int8)", "a.shape == (0, 3) and a.dtype == np.int8 and a.size == 0"),
        ("np.arange(12).reshape(3, 4)[::2, 1::2]", "a.tolist() == [[1, 3], [9, 11]]"),
        ("np.asfortranarray(np.arange(6.0).reshape(2, 3))", "a.tolist() == [[0, 1, 2], [3, 4, 5]]"),
        ("np.arange(6).reshape(2, 3).T", "a.shape == (3, 2) and a[2, 1] == 5"),
        ("np.array([1, -2, 70000], dtype='>i4')", "a.dtype == np.dtype('>i4') and a.tolist() == [1, -2, 70000]"),
        ("np.array([0.5, -1e300], dtype='>f8')", "a.dtype.str == '>f8' and a.tolist() == [0.5, -1e300]"),
        ("np.array([True, False])", "a.dtype == bool and a.tolist() == [True, False]"),
        ("np.array(['ab', 'é😀'])", "a.dtype == np.dtype('<U2') and a.tolist() == ['ab', 'é😀']"),
        ("np.array([b'x', b'yz'])", "a.dtype == np.dtype('S2') and a.tolist() == [b'x', b'yz']"),
        ("np.array([1 + 2j], dtype=np.complex64)", "a.dtype == np.complex64 and a[0] == 1 + 2j"),
        ("np.array([np.nan, np.inf, -0.0], dtype=np.float16)", "a.dtype == np.float16 and np.isnan(a[0]) and np.signbit(a[2])"),
        ("np.uint64(2**64 - 1) * np.ones(2, dtype=np.uint64)", "a.dtype == np.uint64 and a.tolist() == [2**64 - 1] * 2"),
        ("np.broadcast_to(np.arange(3), (2, 3))", "a.tolist() == [[0, 1, 2]] * 2"),
    ],
    ids=["int-2d", "0d", "empty", "strided-view", "fortran", "transposed", "big-endian-int", "big-endian-float",
         "bool", "unicode", "bytes", "complex64", "float16-specials", "uint64-max", "broadcast-small"],
)  # fmt: skip
def test_a_returned_array_arrives_as_the_judges_own_with_its_dtype_shape_and_values(made, check):
    r = judged(
        NP + f"def f():\n    return {made}\n", NP + "a = f()\n" + IS_ARRAY + f"assert {check}, (a, a.dtype)"
    )
    assert_passes(r)


def test_the_usual_array_assertions_grade_a_correct_and_a_wrong_solution():
    tests = (
        NP + "assert np.array_equal(f([3, 1, 2]), np.array([1, 2, 3]))",
        NP + "assert (f([3, 1, 2]) == np.array([1, 2, 3])).all()",
        NP + "np.testing.assert_allclose(f([0.3, 0.1]), [0.1, 0.3])",
        NP + "np.testing.assert_array_equal(f([[2, 1], [4, 3]]), [[1, 2], [3, 4]])",
    )
    assert_passes(judged(NP + "def f(xs):\n    return np.sort(np.array(xs))\n", *tests))
    wrong = judged(NP + "def f(xs):\n    return np.array(xs)\n", *tests)
    assert wrong.status is Status.FAILED and not any(t.passed for t in wrong.tests), brief(wrong)


def test_arrays_go_back_into_the_program_by_value():
    # A result passed back (f(g(x))), an array the test builds, and one nested in a list: the program
    # gets its own numpy's arrays, writable.
    program = NP + (
        "def g(n):\n    return np.arange(n, dtype=np.int32)\n"
        "def f(*xs):\n    return [(type(x) is np.ndarray and x.flags.writeable, x.dtype.str, x * 2) for x in xs]\n"
        "def h(d):\n    return type(d['k'][0]) is np.ndarray\n"
    )
    test = NP + (
        "(k1, d1, a), (k2, d2, b) = f(g(3), np.array([[1.5]], dtype='>f4'))\n"
        "assert k1 and k2 and d1 == '<i4' and d2 == '>f4', (k1, k2, d1, d2)\n"
        "assert a.tolist() == [0, 2, 4] and b.tolist() == [[3.0]]\n"
        "assert h({'k': [np.ones(2)]})"
    )
    assert_passes(judged(program, test))


def test_an_array_changed_in_place_by_the_program_changes_the_tests_array():
    program = "def f(a):\n    a.sort()\n"
    test = NP + (
        "a = np.array([3, 1, 2])\nf(a)\nassert a.tolist() == [1, 2, 3], a\n"
        # A view the test passes writes through to its base, as in one process.
        "b = np.array([9, 5, 4, 0])\nf(b[:3])\nassert b.tolist() == [4, 5, 9, 0], b\n"
        # One the test cannot write keeps its contents.
        "c = np.array([2, 1])\nc.flags.writeable = False\nf(c)\nassert c.tolist() == [2, 1]"
    )
    assert_passes(judged(program, test))


@pytest.mark.parametrize(
    "change, after",
    [
        ("{'nd': ['<i8', [2], '01' * 16]}", "a.tolist() == [3, 1, 2]"),  # another shape: not written
        ("{'nd': ['<f8', [3], '00' * 24]}", "a.tolist() == [3, 1, 2]"),  # another dtype: not written
        ("[1, 2, 3]", None),  # a list for an array: a malformed reply
    ],
    ids=["shape", "dtype", "list"],
)
def test_a_forged_change_to_an_array_argument_is_written_only_as_an_array_of_its_shape(change, after):
    program = src(f"""
        import sys
        crossing = sys.modules['codefoundry_rpc'].crossing
        crossing.snapshot = lambda pos, kw, encode: {{0: ""}}
        crossing.changed_arguments = lambda pos, kw, snap, encode: [[0, {change}]]
        def f(a):
            return None
    """)
    r = judged(program, NP + f"a = np.array([3, 1, 2])\nf(a)\nassert {after or 'False'}, a")
    if after:
        assert_passes(r)
    else:
        assert_fails(r, "program stopped answering")


def test_a_test_relying_on_the_solutions_numpy_import_gets_the_judges_own_numpy():
    # The program's `np` is its to patch: a test using it would ask the program whether it is right.
    program = (
        NP + "np.array_equal = lambda *a, **k: True\nnp.testing = None\ndef f():\n    return np.zeros(2)\n"
    )
    r = judged(program, "assert np.array_equal(f(), [0, 0])", "assert np.array_equal(f(), [1, 2])")
    assert r.tests[0].passed and not r.tests[1].passed, brief(r)


# -- what stays a handle ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "made",
    [
        "np.array([Yes(), Yes()], dtype=object)",
        "Sub([0, 0])",
        "np.matrix([[0, 0]])",
        "np.ma.masked_array([0, 0], mask=[False, True])",
        "np.zeros(2, dtype=[('a', 'i4'), ('b', 'f8')])",
        "np.array(['2020-01-01', '2020-01-02'], dtype='datetime64[D]')",
    ],
    ids=["object-dtype", "subclass", "matrix", "masked", "structured", "datetime64"],
)
def test_an_array_whose_behaviour_is_the_programs_stays_a_handle_and_cannot_pass(made):
    program = NP + (
        "class Yes:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\n"
        "class Sub(np.ndarray):\n    def __new__(cls, xs):\n        return np.asarray(xs).view(cls)\n"
        "    def __eq__(self, o):\n        return np.ones(2, dtype=bool)\n"
        "    def all(self, *a, **k):\n        return True\n"
        "    def tobytes(self, *a, **k):\n        return np.array([1, 2]).tobytes()\n"
        "    __array_interface__ = property(lambda self: np.array([1, 2]).__array_interface__)\n"
        f"def f():\n    return {made}\n"
    )
    r = judged(
        program,
        NP + "assert not isinstance(f(), np.ndarray) and len(f()) in (1, 2)",  # a handle, forwarded
        NP + "assert (f() == np.array([1, 2])).all()",
        NP + "assert np.array_equal(f(), np.array([1, 2]))",
    )
    assert r.tests[0].passed and not r.tests[1].passed and not r.tests[2].passed, brief(r)


def test_an_array_past_the_cap_or_a_huge_broadcast_view_stays_a_handle():
    # 16 MB of content, and a 2.4 GB broadcast view of 24 bytes: neither is copied to be sent.
    program = NP + (
        "def f(big):\n    return np.zeros(2 << 20) if big else np.broadcast_to(np.arange(3.0), (10**8, 3))\n"
    )
    r = judged(
        program,
        NP + "a = f(True)\nassert not isinstance(a, np.ndarray) and a.shape == (2 << 20,)",
        NP + "a = f(False)\nassert not isinstance(a, np.ndarray) and a.shape == (10**8, 3)",
        NP + "assert (f(False) == 0).all()",
    )
    assert r.tests[0].passed and r.tests[1].passed and not r.tests[2].passed, brief(r)
    assert r.status is Status.FAILED, brief(r)


def test_an_array_of_the_cap_crosses_and_one_byte_more_stays_a_handle():
    program = (
        NP
        + "import sys\ncap = sys.modules['codefoundry_rpc'].crossing.MAX_ARRAY_BYTES\n"
        + ("def f(extra):\n    return np.full(cap + extra, 7, dtype=np.uint8)\n")
    )
    r = judged(
        program,
        NP + "a = f(0)\n" + IS_ARRAY + "assert a.size > 8_000_000 and (a == 7).all()",
        NP + "a = f(1)\nassert not isinstance(a, np.ndarray) and a.shape[0] > 8_000_000",
    )
    assert_passes(r)


# -- forged frames ----------------------------------------------------------------------------------------
def _nd(dtype: str, shape: str, data: bytes) -> bytes:
    return f'["r", {{"nd": ["{dtype}", {shape}, "{data.hex()}"]}}]'.encode()


@pytest.mark.parametrize(
    "frame",
    [
        _nd("|O8", "[1]", bytes(8)),  # an object pointer the judge would follow
        _nd("|V8", "[1]", bytes(8)),
        _nd("<M8[D]", "[1]", bytes(8)),
        _nd("<b1", "[1]", bytes(1)),  # not numpy's own spelling of a bool
        _nd("<f3", "[1]", bytes(3)),
        _nd("<i8", "[2]", bytes(8)),  # fewer bytes than the shape holds
        _nd("<i8", "[1]", bytes(16)),
        _nd("<i8", "[-1]", bytes(8)),
        _nd("<i8", "[true]", bytes(8)),
        _nd("<i8", "[1.0]", bytes(8)),
        _nd("<i8", "[4611686018427387904, 4611686018427387904, 0]", b""),  # empty, past numpy's index
        _nd("<i8", "[" + ",".join(["1"] * 33) + "]", bytes(8)),
        _nd("<U1", "[1]", b"\xff\xff\xff\xff"),  # no code point: numpy's str() raised SystemError
        _nd("|S0", "[3]", b""),
        b'["r", {"nd": ["<i8", [1], "0000000000000000", {"h": 1, "o": "c"}]}]',  # an old-style fallback
        b'["r", {"nd": ["<i8", [1], "zz"]}]',
        b'["r", {"nd": ["<i8", [1], [0, 0, 0, 0, 0, 0, 0, 0]]}]',
    ],
    ids=["object", "void", "datetime64", "bool-spelling", "no-dtype", "short", "long", "negative-dim",
         "bool-dim", "float-dim", "huge-empty", "33-dims", "bad-code-point", "zero-itemsize", "handle",
         "bad-hex", "data-not-text"],
)  # fmt: skip
def test_a_forged_array_is_never_a_value_nor_an_error_the_test_expects(frame):
    program = sending(frame, prelude="import numpy\n")
    assert_fails(judged(program, MUST_RAISE), "program stopped answering")


def test_a_frame_full_of_tiny_arrays_is_decoded_and_fails():
    # ~300,000 arrays in a 15 MB frame: each rebuilt at a few microseconds, none held by the sender.
    body = '["r", {"l": [' + ",".join(['{"nd":["<i8",[1],"0100000000000000"]}'] * 300_000) + "]}]"
    program = sending(body.encode())
    assert_fails(judged(program, "assert len(f()) == 1"), "AssertionError")
    assert_judge_still_judges()


def test_bool_bytes_other_than_0_and_1_arrive_as_true():
    # A byte of 2 in a bool array compared unequal to True in numpy's own loops.
    program = sending(_nd("|b1", "[3]", bytes([0, 1, 2])))
    test = NP + "a = f()\nassert a.view(np.uint8).tolist() == [0, 1, 1] and (a == [False, True, True]).all()"
    assert_passes(judged(program, test))


def test_a_program_that_replaces_numpy_or_patches_its_encoder_sends_only_data():
    # Its own ndarray class (whose == says yes) in a fake numpy, and an encoder of its own: whatever
    # reaches the judge is an array of the values sent, compared by the judge's numpy.
    fake = NP + (
        "import sys, types\nclass Lie(np.ndarray):\n    def __eq__(self, o):\n        return np.ones(2, bool)\n"
        "fake = types.ModuleType('numpy')\nfake.ndarray, fake.generic, fake.dtype = Lie, np.generic, np.dtype\n"
        "sys.modules['numpy'] = fake\n"
        "def f():\n    return np.zeros(2).view(Lie)\n"
    )
    patched = NP + (
        "import sys\ncrossing = sys.modules['codefoundry_rpc'].crossing\n"
        "crossing.array_parts = lambda obj, numpy: ['<i8', [2], np.array([1, 2]).tobytes().hex()]\n"
        "def f():\n    return np.zeros(2)\n"
    )
    test = NP + "a = f()\nassert (a == np.array([1, 2])).all()"
    assert_fails(judged(fake, test), "AssertionError")  # the zeros it holds
    # An encoder that sends [1, 2] (int64) for every array is a program returning that array.
    r = judged(patched, test, NP + "assert f().dtype == np.float64")
    assert r.tests[0].passed and not r.tests[1].passed, brief(r)
    assert_judge_still_judges()


# -- the codec in one process -----------------------------------------------------------------------------
@pytest.fixture
def pair():
    a_to_b, b_to_a = os.pipe(), os.pipe()
    yield rpc.Channel(b_to_a[0], a_to_b[1], "j"), rpc.Channel(a_to_b[0], b_to_a[1], "c")
    for fd in (*a_to_b, *b_to_a):
        os.close(fd)


def test_an_array_where_numpy_cannot_be_imported_is_refused_and_nothing_is_held(pair, monkeypatch):
    # Both ends run one interpreter: only a program's own fake numpy makes arrays for a judge without one.
    judge, program = pair
    encoded = program.encode([np.arange(3)])
    assert program.exported == {}  # an array that crossed by value is not held for the run
    monkeypatch.setitem(sys.modules, "numpy", None)  # as if numpy were not installed in the judge
    with pytest.raises(rpc.PeerGone, match="numpy cannot be imported"):
        judge.decode(encoded)


def test_an_array_over_the_cap_in_a_frame_is_refused(pair):
    judge, _ = pair
    n = crossing.MAX_ARRAY_BYTES + 8
    body = {"nd": ["|u1", [n], "00" * n]}
    with pytest.raises(rpc.PeerGone, match="over"):
        judge.decode(body)


def test_plain_values_do_not_import_numpy_in_the_judge():
    # numpy's import costs ~100 ms: only an array's arrival may pay it.
    code = (
        "import os, sys\nfrom codefoundry.sandbox import rpc\n"
        "r, w = os.pipe()\nch = rpc.Channel(r, w, 'j')\n"
        "v = ch.decode(ch.encode([1, 2.5, 'x', (3, {4: 5}), range(3)]))\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
