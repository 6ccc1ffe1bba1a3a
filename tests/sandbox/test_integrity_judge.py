"""Verdict integrity, part 2: reaching into the judge, reading the tests, and legitimate programs that
must pass (helpers in integrity_kit.py)."""

from __future__ import annotations

import pytest
from integrity_kit import (
    CORRECT,
    assert_not_forged,
    assert_passes,
    brief,
    judged,
    src,
)

from codefoundry.sandbox import Judge, Limits, Status, execute, shutdown

# -- reaching into the judge through objects it hands over ----------------------------------------------------------
MAKE_YES = ("type('Yes', (), {'__eq__': lambda s, o: True, '__ne__': lambda s, o: False, "
            "'__hash__': lambda s: 0, '__bool__': lambda s: True})()")  # fmt: skip


def test_callback_handle_cannot_run_code_in_the_judge():
    """The judge passes a lambda; the program walks from that handle to the judge's builtins and builds, in
    the judge, an object whose == is always true, then returns it so that the judge compares its own object."""
    judge = Judge(
        tests=("assert apply(lambda v: v + 1, 1) == 2", "assert apply(lambda v: v * 2, 21) == 42",
               "assert apply(lambda v: v - 1, 0) == -1"),
        entry_point="apply",
    )  # fmt: skip
    prog = src(f"""
        MAKE_YES = {MAKE_YES!r}
        _yes = []
        def apply(f, x):
            if not _yes:
                try:
                    b = f._op('getattr', '__builtins__')
                    ev = b['eval'] if isinstance(b, dict) else b._op('getattr', 'eval')
                    _yes.append(ev(MAKE_YES))
                    print('ESCAPED into the judge', flush=True)
                except Exception as e:
                    print('escape failed:', type(e).__name__, e, flush=True)
                    _yes.append(None)
            return _yes[0]
    """)
    r = judged(prog, judge)
    assert "ESCAPED" not in r.stdout, brief(r)
    assert_not_forged(r)


def test_builtin_type_argument_cannot_run_code_in_the_judge():
    """The judge passes the type `int`; from it the program reaches object.__subclasses__(), a Python
    function's __builtins__ in the judge, and the judge's eval."""
    judge = Judge(
        tests=("assert convert(int, '7') == 7", "assert convert(float, '2.5') == 2.5"), entry_point="convert"
    )
    prog = src(f"""
        MAKE_YES = {MAKE_YES!r}
        _yes = []
        def find_eval(t):
            base = t._op('getattr', '__base__')
            subclasses = base._op('getattr', '__subclasses__')()
            for c in subclasses:
                try:
                    b = c._op('getattr', '__init__')._op('getattr', '__builtins__')
                except Exception:
                    continue
                if isinstance(b, dict) and 'eval' in b:
                    return b['eval']
            raise LookupError('no route to eval')
        def convert(t, s):
            if not _yes:
                try:
                    _yes.append(find_eval(t)(MAKE_YES))
                    print('ESCAPED into the judge', flush=True)
                except Exception as e:
                    print('escape failed:', type(e).__name__, e, flush=True)
                    _yes.append(None)
            return _yes[0]
    """)
    r = judged(prog, judge, limits=Limits(cpu_seconds=4, memory_mb=256))
    assert "ESCAPED" not in r.stdout, brief(r)
    assert_not_forged(r)


def test_generator_argument_cannot_reach_the_judge_frames():
    """The judge passes a generator; its gi_frame (not a dunder) leads to f_builtins and the judge's eval."""
    judge = Judge(
        tests=("assert total(x * x for x in range(4)) == 14", "assert total(iter([1, 2])) == 3"),
        entry_point="total",
    )
    prog = src(f"""
        MAKE_YES = {MAKE_YES!r}
        _yes = []
        def total(g):
            if not _yes:
                try:
                    frame = g._op('getattr', 'gi_frame')
                    b = frame._op('getattr', 'f_builtins')
                    _yes.append(b['eval'](MAKE_YES))
                    print('ESCAPED into the judge', flush=True)
                except Exception as e:
                    print('escape failed:', type(e).__name__, e, flush=True)
                    _yes.append(None)
            return _yes[0]
    """)
    r = judged(prog, judge)
    assert "ESCAPED" not in r.stdout, brief(r)
    assert_not_forged(r)


# -- reading the tests ------------------------------------------------------------------------------------------------
LEAK_HUNTER = src("""
    import gc, os, re, sys
    PAT = re.compile(rb'add\\((-?\\d+), (-?\\d+)\\) == (-?\\d+)')
    answers, leaks = {}, {}
    def note(where, data):
        if isinstance(data, str):
            data = data.encode('utf-8', 'replace')
        if not isinstance(data, (bytes, bytearray)):
            return
        for m in PAT.finditer(data):
            a, b, c = (int(x) for x in m.groups())
            answers[(a, b)] = c
            leaks.setdefault(where, bytes(m.group(0)))
    def strings_in(o):
        if isinstance(o, dict):
            yield from o.keys()
            yield from o.values()
        elif isinstance(o, (list, tuple, set, frozenset)):
            yield from o
        elif hasattr(o, 'co_consts'):
            yield from o.co_consts
    def scan_memory(pid):
        try:
            maps = open(f'/proc/{pid}/maps').read().splitlines()
            fd = os.open(f'/proc/{pid}/mem', os.O_RDONLY)
        except OSError:
            return
        try:
            for line in maps:
                parts = line.split()
                if 'r' not in parts[1] or (len(parts) > 5 and parts[5] in ('[vvar]', '[vsyscall]')):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split('-'))
                if hi - lo > (256 << 20):
                    continue
                for at in range(lo, hi, 4 << 20):  # 4 MiB at a time, overlapping by 64 bytes
                    try:
                        note(f'/proc/{pid}/mem', os.pread(fd, min(hi, at + (4 << 20) + 64) - at, at))
                    except (OSError, OverflowError, MemoryError):
                        break
        finally:
            os.close(fd)
    def scan_files(root, depth=0):
        if depth > 3 or root in ('/proc', '/sys', '/dev', '/usr', '/lib', '/lib64', '/bin', '/sbin', '/etc') \\
                or os.path.realpath(root) == os.path.realpath(sys.prefix):
            return
        try:
            names = os.listdir(root)[:300]
        except OSError:
            return
        for n in names:
            p = os.path.join(root, n)
            if os.path.islink(p):
                continue
            if os.path.isdir(p):
                scan_files(p, depth + 1)
            elif os.path.isfile(p):  # regular files only: no /dev/zero
                try:
                    with open(p, 'rb') as f:
                        note(p, f.read(1 << 20))
                except OSError:
                    pass
    def hunt(when):
        try:
            pids = [p for p in os.listdir('/proc') if p.isdigit()]
        except OSError:
            pids = []
            print('NO PROC', flush=True)
        for pid in pids:
            for leaf in ('cmdline', 'environ'):
                try:
                    with open(f'/proc/{pid}/{leaf}', 'rb') as f:
                        note(f'/proc/{pid}/{leaf}', f.read())
                except OSError:
                    pass
            scan_memory(pid)
        for o in gc.get_objects():
            for s in strings_in(o):
                note('gc', s)
        for name, mod in list(sys.modules.items()):
            for v in list(getattr(mod, '__dict__', {}).values()):
                note('module ' + name, v)
        for frame in sys._current_frames().values():
            while frame is not None:
                for v in list(frame.f_locals.values()) + list(frame.f_code.co_consts):
                    note('frame', v)
                frame = frame.f_back
        for root in (os.getcwd(), '/tmp', '/judge', '/dev/shm', '/'):
            scan_files(root)
        for where, text in leaks.items():
            print('LEAK', when, where, text, flush=True)
        print('HUNT', when, 'done', len(leaks), flush=True)
    hunt('module')
    def add(a, b):
        if not answers:
            hunt('call')
        return answers.get((a, b), -12345)
""")


def test_leak_hunter_finds_planted_text():
    """Control: the hunter below does find test text where a program can reach it."""
    r = execute(
        LEAK_HUNTER,
        files={"notes.txt": "assert add(2, 2) == 4\n"},
        limits=Limits(cpu_seconds=6, memory_mb=512),
    )
    assert "LEAK module" in r.stdout and "add(2, 2) == 4" in r.stdout, brief(r)


def test_program_cannot_read_the_tests():
    shutdown()  # one fresh worker: the seeding runs and the hunter share it
    for _ in range(3):
        assert_passes(judged(CORRECT), 2)  # the worker has now served these very tests
    r = judged(LEAK_HUNTER, limits=Limits(cpu_seconds=6, memory_mb=512))
    out = r.stdout + r.stderr
    assert "add(2, 2) == 4" not in out, brief(r)
    assert "LEAK" not in r.stdout, brief(r)
    assert "HUNT call done" in r.stdout or "HUNT module done" in r.stdout, brief(r)
    assert_not_forged(r)


# -- legitimate programs must pass ------------------------------------------------------------------------------------
RETURN_CASES = {
    "tuple": ("return (1, 'a', 2.5)", ["assert f() == (1, 'a', 2.5)", "assert type(f()) is tuple"]),
    "list": ("return [1, [2, 3], []]", ["assert f() == [1, [2, 3], []]", "assert type(f()) is list"]),
    "dict": (
        "return {'a': 1, 2: 'b', (1, 2): [3], None: 0.5}",
        ["assert f() == {'a': 1, 2: 'b', (1, 2): [3], None: 0.5}", "assert type(f()) is dict"],
    ),
    "set": ("return {1, 2, 3}", ["assert f() == {3, 2, 1}", "assert type(f()) is set"]),
    "frozenset": (
        "return frozenset('ab')",
        ["assert f() == frozenset({'a', 'b'})", "assert type(f()) is frozenset"],
    ),
    "float": (
        "return (0.1 + 0.2, float('inf'), -0.0, float('nan'))",
        [
            "x = f()\nassert x[0] == 0.30000000000000004 and x[1] == float('inf')",
            "import math\nx = f()\nassert math.copysign(1, x[2]) == -1 and math.isnan(x[3])",
        ],
    ),  # fmt: skip
    "flat_collections": (
        "return ([1, 2.5, 'a', None, True], [2 ** 53, 1], (float('nan'), 2 ** 60), {1.5, -0.0}, [-(2 ** 53) + 1])",
        [
            "x = f()\nassert x[0] == [1, 2.5, 'a', None, True] and x[0][4] is True and x[1] == [2 ** 53, 1]",
            "import math\nx = f()\nassert math.isnan(x[2][0]) and x[2][1] == 2 ** 60 and type(x[2]) is tuple",
            "x = f()\nassert x[3] == {1.5, 0.0} and type(x[3]) is set and x[4] == [-(2 ** 53) + 1]",
        ],
    ),  # fmt: skip
    "none": ("return None", ["assert f() is None"]),
    "bool": (
        "return (True, False)",
        ["assert f() == (True, False)", "assert f()[0] is True and f()[1] is False"],
    ),
    "big_int": (
        "return (2 ** 200 + 1, -(3 ** 90), 2 ** 53 + 1)",
        ["assert f() == (2 ** 200 + 1, -(3 ** 90), 2 ** 53 + 1)", "assert all(type(v) is int for v in f())"],
    ),
    "bytes": (
        "return (b'\\x00\\xffab', bytearray(b'xy'))",
        ["assert f() == (b'\\x00\\xffab', bytearray(b'xy'))", "assert type(f()[0]) is bytes"],
    ),
    "str": (
        "return 'h\\u00e9llo \\u2713 \\U0001f600 \\x00 end'",
        ["assert f() == 'h\\u00e9llo \\u2713 \\U0001f600 \\x00 end'"],
    ),
    "complex": ("return 1 + 2j", ["assert f() == complex(1, 2)"]),
    "empty": ("return ([], {}, (), set(), '', b'')", ["assert f() == ([], {}, (), set(), '', b'')"]),
    "nested": (
        "return {'k': [(1, {2, 3}), {'x': None}], 'f': frozenset({1}), 't': ((), [()])}",
        ["assert f() == {'k': [(1, {2, 3}), {'x': None}], 'f': frozenset({1}), 't': ((), [()])}"],
    ),
}


def test_plain_arguments_reach_the_program_exactly():
    """What the tests pass crosses the other way: flat lists of scalars as themselves, the rest tagged."""
    tests = (
        "import math\nx = f([0.1, -0.0, 2 ** 60, True, None, 'z'], (1.5, float('inf')), [float('nan')])\n"
        "assert x[0] == [0.1, -0.0, 2 ** 60, True, None, 'z'] and math.copysign(1, x[0][1]) == -1\n"
        "assert x[1] == (1.5, float('inf')) and type(x[1]) is tuple and math.isnan(x[2][0])",
        "assert f([2 ** 53 - 1, -(2 ** 53)], {'k': [1.25]}) == ([2 ** 53 - 1, -(2 ** 53)], {'k': [1.25]})",
    )
    r = judged("def f(*args):\n    return args\n", Judge(tests=tests, entry_point="f"))
    assert_passes(r, len(tests))


@pytest.mark.parametrize("case", list(RETURN_CASES), ids=list(RETURN_CASES))
def test_plain_return_values_pass(case):
    body, tests = RETURN_CASES[case]
    r = judged(f"def f():\n    {body}\n", Judge(tests=tuple(tests), entry_point="f"))
    assert_passes(r, len(tests))


def test_expected_valueerror_passes():
    prog = src("""
        def add(a, b):
            if a is None or b is None:
                raise ValueError('need numbers')
            return a + b
    """)
    judge = Judge(
        tests=("try:\n    add(None, 1)\nexcept ValueError as e:\n    assert 'need numbers' in str(e)\n"
               "else:\n    raise AssertionError('no error')",
               "assert add(1, 2) == 3"),
        entry_point="add",
    )  # fmt: skip
    assert_passes(judged(prog, judge), 2)


def test_expected_typeerror_passes():
    judge = Judge(
        tests=(
            "try:\n    add(None, 1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError",
            "assert add(2, 2) == 4",
        ),
        entry_point="add",
    )
    assert_passes(judged(CORRECT, judge), 2)


def test_custom_exception_caught_as_exception_passes():
    prog = src("""
        class Bad(Exception):
            pass
        def add(a, b):
            if a < 0:
                raise Bad('negative')
            return a + b
    """)
    judge = Judge(
        tests=(
            "try:\n    add(-1, 1)\nexcept Exception:\n    pass\nelse:\n    raise AssertionError",
            "assert add(2, 2) == 4",
        ),
        entry_point="add",
    )
    assert_passes(judged(prog, judge), 2)


def test_class_returned_as_handle_passes():
    prog = src("""
        class Stack:
            def __init__(self):
                self.items = []
            def push(self, x):
                self.items.append(x)
            def pop(self):
                return self.items.pop()
            def size(self):
                return len(self.items)
    """)
    judge = Judge(
        tests=("s = Stack()\ns.push(1)\nassert s.pop() == 1",
               "s = Stack()\ns.push('a')\ns.push([2])\nassert s.size() == 2\nassert s.pop() == [2]",
               "s = Stack()\ntry:\n    s.pop()\nexcept IndexError:\n    pass\nelse:\n    raise AssertionError"),
        entry_point="Stack",
    )  # fmt: skip
    assert_passes(judged(prog, judge), 3)


def test_generator_consumed_with_list_passes():
    prog = "def squares(n):\n    for i in range(n):\n        yield i * i\n"
    judge = Judge(
        tests=("assert list(squares(4)) == [0, 1, 4, 9]", "assert sum(squares(3)) == 5"),
        entry_point="squares",
    )
    assert_passes(judged(prog, judge), 2)


def test_callback_from_the_test_passes():
    prog = "def apply(f, *args):\n    return f(*args)\n"
    judge = Judge(
        tests=("assert apply(lambda v: v * 2, 21) == 42", "assert apply(len, 'abc') == 3",
               "assert apply(sorted, [3, 1, 2]) == [1, 2, 3]", "assert apply(lambda a, b: a + b, 'x', 'y') == 'xy'"),
        entry_point="apply",
    )  # fmt: skip
    assert_passes(judged(prog, judge), 4)


def test_generator_argument_passes():
    prog = "def total(it):\n    return sum(it)\n"
    judge = Judge(
        tests=("assert total(x * x for x in range(4)) == 14", "assert total(iter([1, 2])) == 3"),
        entry_point="total",
    )
    assert_passes(judged(prog, judge), 2)


def test_setup_class_instance_passed_to_candidate_passes():
    """LeetCode-style: the setup defines a node class, the tests build nodes and pass them in, and the program
    reads their attributes (.val, .next)."""
    setup = src("""
        class ListNode:
            def __init__(self, val=0, next=None):
                self.val = val
                self.next = next
        def from_list(xs):
            head = None
            for x in reversed(xs):
                head = ListNode(x, head)
            return head
        def to_list(node):
            out = []
            while node is not None:
                out.append(node.val)
                node = node.next
            return out
    """)
    prog = src("""
        def total(head):
            s = 0
            while head is not None:
                s += head.val
                head = head.next
            return s
    """)
    judge = Judge(tests=("assert total(from_list([1, 2, 3])) == 6", "assert total(None) == 0"), entry_point="total",
                  setup=setup)  # fmt: skip
    assert_passes(judged(prog, judge), 2)


def test_key_function_callback_passes():
    prog = "def order(xs, key):\n    return sorted(xs, key=key)\n"
    judge = Judge(tests=("assert order([3, 1, 2], lambda v: -v) == [3, 2, 1]",), entry_point="order")
    assert_passes(judged(prog, judge), 1)


def test_setup_helper_passes():
    judge = Judge(
        tests=("assert double(add(1, 2)) == 6", "assert math.isclose(add(0.1, 0.2), 0.3)"),
        entry_point="add",
        setup="import math\ndef double(x):\n    return 2 * x\n",
    )
    assert_passes(judged(CORRECT, judge), 2)


def test_float_with_isclose_passes():
    prog = "def mean(xs):\n    return sum(xs) / len(xs)\n"
    judge = Judge(tests=("import math\nassert math.isclose(mean([0.1, 0.2, 0.3]), 0.2)",), entry_point="mean")
    assert_passes(judged(prog, judge), 1)


def test_candidate_alias_and_humaneval_style_check_pass():
    judge = Judge(
        tests=("def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
               "check(add)", "assert candidate(5, 5) == 10"),
        entry_point="add",
    )  # fmt: skip
    assert_passes(judged(CORRECT, judge), 3)


def test_snippets_share_one_namespace():
    judge = Judge(tests=("x = add(1, 2)", "assert x == 3"), entry_point="add")
    assert_passes(judged(CORRECT, judge), 2)


def test_printing_program_still_passes():
    prog = "print('loading', flush=True)\n" + CORRECT + "print('loaded')\n"
    r = judged(prog)
    assert_passes(r, 2)
    assert "loading" in r.stdout, brief(r)


def test_missing_entry_point_fails_cleanly():
    r = judged("def plus(a, b):\n    return a + b\n")
    assert_not_forged(r, Status.FAILED)


def test_syntax_error_fails_cleanly():
    r = judged("def add(a, b)\n    return a + b\n")
    assert_not_forged(r, Status.FAILED)


PARTIAL = src("""
    def add(a, b):
        if (a, b) == (7, 7):
            print('CALLED77', flush=True)
        return 0 if a == 2 else a + b
""")
THREE = ("assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(7, 7) == 14")


def test_partial_solution_counts_tests():
    r = judged(PARTIAL, Judge(tests=THREE, entry_point="add"))
    assert_not_forged(r, Status.FAILED)
    assert [t.passed for t in r.tests] == [True, False, True], brief(r)
    assert r.tests_passed == 2, brief(r)
    assert r.tests_completed is True, brief(r)
    assert "CALLED77" in r.stdout, brief(r)


def test_stop_on_failure_stops_at_first_failure():
    r = judged(PARTIAL, Judge(tests=THREE, entry_point="add", stop_on_failure=True))
    assert_not_forged(r, Status.FAILED)
    assert len(r.tests) in (2, 3), brief(r)
    assert r.tests[0].passed and not r.tests[1].passed, brief(r)
    if len(r.tests) == 3:
        assert not r.tests[2].passed, brief(r)
    assert r.tests_passed == 1, brief(r)
    assert "CALLED77" not in r.stdout, brief(r)
