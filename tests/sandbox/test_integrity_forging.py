"""Verdict integrity, part 1: leaving early, patching the checking machinery, values that pretend
(helpers in integrity_kit.py)."""

from __future__ import annotations

import pytest
from integrity_kit import (
    CORRECT,
    LIMITS,
    WRONG,
    assert_not_forged,
    assert_passes,
    brief,
    judged,
    src,
)

from codefoundry.sandbox import Judge, Status


# -- baseline --------------------------------------------------------------------------------------------------
def test_correct_program_passes():
    assert_passes(judged(CORRECT), 2)


def test_wrong_program_fails():
    r = judged(WRONG)
    assert_not_forged(r, Status.FAILED)
    assert r.tests_completed is True, brief(r)
    assert r.tests_passed == 0 and len(r.tests) == 2, brief(r)
    assert all("AssertionError" in t.error for t in r.tests), brief(r)


# -- leaving early -----------------------------------------------------------------------------------------------
EARLY_EXITS = {
    "sys_exit_0": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
    "os_exit_0": "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n",
    "raise_systemexit": "def add(a, b):\n    return 0\nraise SystemExit\n",
    "self_sigkill": "import os\ndef add(a, b):\n    return 0\nos.kill(os.getpid(), 9)\n",
    "exit_inside_add": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "sys_exit_inside_add": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "no_entry_point": "print('nothing to see')\n",
}


@pytest.mark.parametrize("name", list(EARLY_EXITS), ids=list(EARLY_EXITS))
def test_early_exit_is_not_a_pass(name):
    assert_not_forged(judged(EARLY_EXITS[name]))


def test_closing_stdout_and_stderr():
    prog = "import os\nos.close(1)\nos.close(2)\n" + WRONG
    assert_not_forged(judged(prog))


def test_thread_exits_process_with_zero_mid_judging():
    prog = src("""
        import os, threading, time
        def later():
            time.sleep(0.2)
            os._exit(0)
        threading.Thread(target=later).start()
        def add(a, b):
            time.sleep(0.5)
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_atexit_handler():
    prog = src("""
        import atexit, os
        atexit.register(os._exit, 0)
        atexit.register(print, 'ALL TESTS PASSED')
        def add(a, b):
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_del_tricks():
    prog = src("""
        import os
        class Bomb:
            def __del__(self):
                print('ALL TESTS PASSED', flush=True)
                os._exit(0)
        keep = Bomb()
        def add(a, b):
            return Bomb()
    """)
    assert_not_forged(judged(prog))


# -- patching the checking machinery ------------------------------------------------------------------------------
def test_patch_builtins_assertion_error():
    prog = src("""
        import builtins
        builtins.AssertionError = type('NotAnAssertion', (Exception,), {})
        builtins.Exception = type('NotAnException', (BaseException,), {})
        def add(a, b):
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_patch_builtins_import():
    prog = src("""
        import builtins, types
        fake = types.ModuleType('fake')
        fake.__getattr__ = lambda name: (lambda *a, **k: True)
        builtins.__import__ = lambda *a, **k: fake
        def add(a, b):
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_patch_unittest_helpers():
    prog = src("""
        import unittest
        for name in dir(unittest.TestCase):
            if name.startswith('assert') or name == 'fail':
                setattr(unittest.TestCase, name, lambda *a, **k: None)
        def add(a, b):
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_settrace_frame_manipulation():
    prog = src("""
        import ctypes, sys, threading
        NAMES = {'passed', 'ok', 'success', 'verdict', 'completed', 'all_passed'}
        def tracer(frame, event, arg):
            if event in ('call', 'return'):
                loc = frame.f_locals
                hit = False
                for k in list(loc):
                    if k in NAMES:
                        loc[k] = True
                        hit = True
                    elif k == 'outcomes' and isinstance(loc[k], list):
                        for o in loc[k]:
                            if isinstance(o, list) and o:
                                o[0] = True
                if hit:
                    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
            return tracer
        sys.settrace(tracer)
        threading.settrace(tracer)
        def add(a, b):
            f = sys._getframe()
            while f is not None:
                f.f_trace = tracer
                f = f.f_back
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_gc_monkeypatch_of_checking_code():
    prog = src("""
        import gc, json, types
        def yes(*a, **k):
            return True
        WORDS = ('check', 'judge', 'verdict', 'report', 'run_test', 'decode', 'rebuild', 'expect', 'outcome')
        for o in gc.get_objects():
            if isinstance(o, types.FunctionType) and o.__name__ != 'add':
                if any(w in o.__name__.lower() for w in WORDS):
                    try:
                        o.__code__ = yes.__code__
                    except (ValueError, TypeError):
                        pass
            elif isinstance(o, dict):
                for key in ('passed', 'completed', 'ok'):
                    if key in o:
                        o[key] = True
                if 'tests' in o and isinstance(o['tests'], list):
                    o['tests'] = [[True, ''] for _ in o['tests']]
        real_dumps = json.dumps
        def dumps(obj, *a, **k):
            if isinstance(obj, dict):
                obj = dict(obj, passed=True, completed=True, status='ok')
            return real_dumps(obj, *a, **k)
        json.dumps = dumps
        def add(a, b):
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_write_success_tokens_to_every_fd():
    prog = src("""
        import json, os, struct
        TOKENS = [b'PASS\\n', b'OK\\n', b'ok\\n', b'ALL TESTS PASSED\\n', b'{"passed": true, "status": "ok"}\\n',
                  json.dumps({'tests': [[True, ''], [True, '']], 'completed': True}).encode() + b'\\n']
        def frame(obj):
            body = json.dumps(obj).encode()
            return struct.pack('>I', len(body)) + body
        FRAMES = [frame(['r', True]), frame({'tests': [[True, ''], [True, '']], 'completed': True})]
        def spray():
            for fd in range(0, 256):
                for t in TOKENS + FRAMES:
                    try:
                        os.write(fd, t)
                    except OSError:
                        pass
        spray()
        def add(a, b):
            spray()
            return a - b
    """)
    assert_not_forged(judged(prog))


def test_forged_report_file_and_killing_the_judge():
    prog = src("""
        import json, os, signal
        FORGED = json.dumps({'tests': [[True, ''], [True, '']], 'completed': True})
        def forge():
            for d in ('/judge', os.getcwd(), '/tmp', '/work', os.path.dirname(os.getcwd()), '/', '..'):
                try:
                    with open(os.path.join(d, 'report.json'), 'w') as f:
                        f.write(FORGED)
                except OSError:
                    pass
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            try:
                pids = {int(p) for p in os.listdir('/proc') if p.isdigit()}
            except OSError:
                pids = set()
            for p in sorted(pids | set(range(1, 1024))):
                if p != os.getpid():
                    for sig in (signal.SIGSTOP, signal.SIGKILL):
                        try:
                            os.kill(p, sig)
                        except OSError:
                            pass
        forge()
        def add(a, b):
            forge()
            return a - b
    """)
    assert_not_forged(judged(prog))


# -- values that pretend -------------------------------------------------------------------------------------------
def test_object_whose_eq_is_always_true():
    prog = src("""
        class Yes:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
            def __hash__(self): return 0
            def __lt__(self, other): return False
            __le__ = __ge__ = __eq__
        def add(a, b):
            return Yes()
    """)
    assert_not_forged(judged(prog), Status.FAILED)


@pytest.mark.parametrize(
    "base", ["int", "str", "float", "tuple", "list", "dict", "bytes", "complex", "frozenset"]
)
def test_builtin_subclass_with_eq_always_true(base):
    prog = src(f"""
        class AlwaysEq({base}):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __hash__(self): return 0
            def __bool__(self): return True
            def __int__(self): return 3
            def __index__(self): return 3
            def __float__(self): return 3.0
            def __str__(self): return '3'
            def __iter__(self): return iter([3])
            def __len__(self): return 1
        def add(a, b):
            return AlwaysEq()
    """)
    assert_not_forged(judged(prog), Status.FAILED)


def test_int_subclass_compared_by_value():
    """AlwaysEq(0) crosses as the plain int 0, so add(1, 2) == 3 must fail."""
    prog = src("""
        class AlwaysEq(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = int.__hash__
        def add(a, b):
            return AlwaysEq(0)
    """)
    r = judged(prog)
    assert_not_forged(r, Status.FAILED)
    assert r.tests_passed == 0, brief(r)


@pytest.mark.parametrize(
    ("items", "kind"),
    [("[AlwaysEq(0)]", "list"), ("(1.5, AlwaysEq(0))", "tuple"), ("{AlwaysEq(0), 'a'}", "set"),
     ("[True, AlwaysEq(0)]", "list")],
)  # fmt: skip
def test_int_subclass_inside_a_flat_collection(items, kind):
    """A flat collection of scalars crosses without a per-item walk only when every item's type is exactly a
    builtin scalar: a subclass among them sends it the slow way, where it becomes a plain int."""
    prog = src(f"""
        class AlwaysEq(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = int.__hash__
        def add(a, b):
            return {items}
    """)
    judge = Judge(tests=(f"x = add(1, 2)\nassert type(x) is {kind} and 3 in x",), entry_point="add")
    assert_not_forged(judged(prog, judge), Status.FAILED)


def test_malformed_reply_cannot_raise_what_the_test_expects():
    """A test that expects an exception from the entry point: the program answers the call with a frame the
    judge cannot decode. That must read as the program no longer answering, never as that exception raised
    by the call."""
    for reply, error in [(b'["r", {"t": [1], "x": 1}]', "ValueError"),
                         (b'["r", {"c": ["0x1p99999", "0x0p0"]}]', "OverflowError")]:  # fmt: skip
        prog = src(f"""
            import os
            def add(a, b):
                body = {reply!r}
                os.write(4, len(body).to_bytes(4, "big") + body)
                os._exit(0)
        """)
        test = (
            f"try:\n    add(1, 2)\nexcept {error}:\n    pass\nelse:\n    raise AssertionError('no {error}')"
        )
        assert_not_forged(judged(prog, Judge(tests=(test,), entry_point="add")), Status.FAILED)


def test_deeply_nested_return_value():
    prog = src("""
        def add(a, b):
            x = []
            for _ in range(200_000):
                x = [x]
            return x
    """)
    assert_not_forged(judged(prog))


def test_add_that_spins_forever():
    assert_not_forged(judged("def add(a, b):\n    while True:\n        pass\n"), Status.TIMEOUT)


def test_add_that_sleeps_forever():
    r = judged("import time\ndef add(a, b):\n    time.sleep(600)\n")
    assert_not_forged(r, Status.TIMEOUT)
    assert r.wall_seconds <= LIMITS.wall + 1.5, brief(r)
