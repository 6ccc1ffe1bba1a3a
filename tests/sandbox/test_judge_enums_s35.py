"""Members of a judged program's own `enum.Enum` classes cross the judge channel by value (session 35): a
class as its name, kind (Enum, IntEnum, StrEnum, Flag, IntFlag, or an int or str mixin), a Flag's boundary
and its members' names and plain values; the judge makes an Enum class of its own of them, the same one
for the same data, which a test naming the program's class gets too. They were handles: `f() is
Color.RED` failed a correct solution, and `f() == Color.RED` compared two of the program's objects in the
program, where an `__eq__` of its own said yes to a wrong answer.

The red team's program owns its end of the channel (`redteam_kit.sending`), so every class and member the
judge rebuilds is checked there: each trick must fail (never pass, never `sandbox_error`), and the judge
must still serve correct verdicts afterwards.
"""

from __future__ import annotations

import enum
import json
import os

import pytest
from redteam_kit import MUST_RAISE, assert_fails, assert_passes, brief, sending, src

from codefoundry.sandbox import Judge, Limits, Status, crossing, execute, rpc

LIMITS = Limits(cpu_seconds=5, memory_mb=512)
# The limits (read so, the module runs against code from before them too, where its tests fail).
MAX_MEMBERS = getattr(crossing, "MAX_MEMBERS", 256)
MAX_ENUM_TEXT = getattr(crossing, "MAX_ENUM_TEXT", 1 << 16)
MAX_RUN_ENUMS = getattr(crossing, "MAX_RUN_ENUMS", 64)
MAX_ENUM_CLASSES = getattr(crossing, "MAX_ENUM_CLASSES", 128)
COLOR = src("""
    import enum
    class Color(enum.Enum):
        RED = 1
        GREEN = 2
        CRIMSON = 1
    def f(x):
        return Color.RED if x else Color.GREEN
""")


def judged(program: str, *tests: str, entry_point: str = "f"):
    return execute(program, judge=Judge(tests=tests, entry_point=entry_point), limits=LIMITS)


def assert_judge_still_judges() -> None:
    assert_passes(judged(COLOR, "assert f(1) is Color.RED and f(0) == Color.GREEN"))
    assert_fails(judged(COLOR, "assert f(0) == Color.RED"))


# -- correct solutions ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "program, test",
    [
        (COLOR, "assert f(1) is Color.RED and f(0) is Color.GREEN and f(1) == Color.RED != f(0)"),
        (COLOR, "c = f(1)\nassert c.name == 'RED' and c.value == 1 and isinstance(c, Color) and type(c) is Color\n"
                "assert Color(2) is f(0) and Color['RED'] is c and list(Color) == [Color.RED, Color.GREEN]"),
        (COLOR, "assert f(1) is Color.CRIMSON and 'CRIMSON' in Color.__members__ and len(Color) == 2"),
        (COLOR, "assert f(1) in {Color.RED: 1} and [f(0), f(1)] == [Color.GREEN, Color.RED]"),
        (COLOR + "def g():\n    return {Color.RED: [Color.GREEN], 'k': (Color.CRIMSON,)}\n",
         "assert g() == {Color.RED: [Color.GREEN], 'k': (Color.RED,)}"),
        ("import enum\nclass Level(enum.IntEnum):\n    LOW = 1\n    HIGH = 3\ndef f():\n    return Level.HIGH\n",
         "assert type(f()) is Level and f() == 3 and isinstance(f(), int) and sorted([f(), 2]) == [2, 3]"),
        ("import enum\nclass Mode(enum.StrEnum):\n    READ = enum.auto()\ndef f():\n    return Mode.READ\n",
         "assert f() is Mode.READ and f() == 'read' and f().upper() == 'READ' and str(f()) == 'read'"),
        ("import enum\nclass Mode(str, enum.Enum):\n    READ = 'r'\ndef f():\n    return Mode.READ\n",
         "assert type(f()) is Mode and f() is Mode.READ and f() == 'r' and isinstance(f(), str)"),
        ("import enum\nclass Size(int, enum.Enum):\n    S = 1\n    L = 3\ndef f():\n    return Size.L\n",
         "assert type(f()) is Size and f() is Size.L and f() == 3 and f() > Size.S"),
        ("import enum\nclass Perm(enum.Flag):\n    R = 4\n    W = 2\n    X = 1\ndef f():\n    return Perm.R | Perm.W\n",
         "assert f() == Perm.R | Perm.W and Perm.R in f() and Perm.X not in f() and f() is Perm(6)"),
        ("import enum\nclass Perm(enum.IntFlag):\n    R = 4\n    W = 2\ndef f():\n    return Perm.R | Perm.W | 8\n",
         "assert f() == 14 and f() == Perm.R | Perm.W | 8 and Perm.W in f()"),
        ("import enum\nclass Planet(enum.Enum):\n    EARTH = (5.97e24, 6.37e6)\n"
         "    def __init__(self, mass, radius):\n        self.mass = mass\ndef f():\n    return Planet.EARTH\n",
         "assert f() is Planet.EARTH and f().value == (5.97e24, 6.37e6)"),
        # A name the program binds to a member, and an Enum class nested in the solution's class.
        (COLOR + "DEFAULT = Color.GREEN\n", "assert f(0) == DEFAULT and f(0) is DEFAULT"),
        ("import enum\nclass Solution:\n    class Dir(enum.Enum):\n        UP = 'u'\n"
         "    def f(self):\n        return self.Dir.UP\n", "assert Solution().f() is Solution.Dir.UP"),
        # The test relies on the solution's `from enum import Enum`: the judge's own Enum, of which the
        # judge-made class derives.
        ("from enum import Enum\nclass Color(Enum):\n    RED = 1\ndef f():\n    return Color.RED\n",
         "assert isinstance(f(), Enum) and issubclass(Color, Enum) and Enum.__module__ == 'enum'"),
        ("from http import HTTPStatus\ndef f():\n    return HTTPStatus.NOT_FOUND\n",
         "assert f() == HTTPStatus.NOT_FOUND and f() == 404 and f().name == 'NOT_FOUND'"),
    ],
    ids=["is", "name-value-lookup", "alias", "hash", "nested", "int-enum", "str-enum", "str-mixin",
         "int-mixin", "flag", "int-flag-keep", "tuple-value", "bound-member", "nested-class",
         "solutions-enum-import", "stdlib-enum"],
)  # fmt: skip
def test_a_correct_solution_returning_an_enum_member_passes(program, test):
    assert_passes(judged(program, test))


def test_a_wrong_member_fails_by_is_and_by_eq():
    r = judged(COLOR, "assert f(0) == Color.RED", "assert f(0) is Color.RED", "assert f(1) != Color.CRIMSON")
    assert r.status is Status.FAILED and not any(t.passed for t in r.tests), brief(r)


def test_members_the_test_passes_are_the_programs_own_again():
    program = COLOR + src("""
        class Perm(enum.Flag):
            R = 4
            W = 2
        def g(c):
            return c is Color.RED
        def h(p, d):
            return type(p) is Perm and p == Perm.R | Perm.W and [type(k) for k in d] == [Color]
        def grow(xs):
            xs.append(Color.GREEN)
    """)
    test = (
        "assert g(Color.RED) and g(Color.CRIMSON) and g(f(1)) and not g(Color.GREEN)\n"
        "assert h(Perm.R | Perm.W, {Color.RED: [Color.GREEN]})\n"
        "xs = [Color.RED]\ngrow(xs)\nassert xs == [Color.RED, Color.GREEN] and xs[1] is Color.GREEN"
    )
    assert_passes(judged(program, test))


def test_methods_and_attributes_of_the_programs_enum_do_not_come_along():
    # As with namedtuples: the judge's class has the members, not the program's code.
    program = src("""
        import enum
        class Base(enum.Enum):
            def describe(self):
                return 'mine'
        class Color(Base):
            RED = 1
        def f():
            return Color.RED
    """)
    r = judged(program, "assert f() is Color.RED and not hasattr(f(), 'describe')", "assert f().describe()")
    assert r.tests[0].passed and not r.tests[1].passed, brief(r)


def test_an_enum_that_cannot_cross_by_value_stays_what_it_was():
    # Over MAX_MEMBERS members, or values that are the program's objects: a handle (an IntEnum: its plain
    # int), compared in the program as before.
    many = ", ".join(f"('M{i}', {i})" for i in range(MAX_MEMBERS + 1))
    program = src(f"""
        import enum
        class Obj:
            pass
        Big = enum.Enum('Big', [{many}])
        Wide = enum.IntEnum('Wide', [{many}])
        class Held(enum.Enum):
            A = Obj()
            B = Obj()
        def f(which):
            return {{'big': Big.M3, 'wide': Wide.M3, 'held': Held.A}}[which]
    """)
    r = judged(
        program,
        "assert f('big') == Big.M3 and f('held') == Held.A and f('wide') == 3 and type(f('wide')) is int",
        "assert f('big') == Big.M4",
        "assert f('held') == Held.B",
    )
    assert r.tests[0].passed and not r.tests[1].passed and not r.tests[2].passed, brief(r)


def test_more_enum_classes_than_a_run_sends_by_value_still_grade():
    program = "import enum\ndef f(i):\n    return enum.Enum(f'E{i}', ['A', 'B']).A\n"
    test = f"for i in range({MAX_RUN_ENUMS + 20}):\n    assert f(i).name == 'A', i"
    assert_passes(judged(program, test))


# -- the red team -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "base",
    ["enum.Enum", "int, enum.Enum", "enum.IntEnum", "str, enum.Enum", "enum.StrEnum", "enum.Flag"],
    ids=["enum", "int-mixin", "int-enum", "str-mixin", "str-enum", "flag"],
)
def test_an_enum_whose_eq_and_hash_lie_is_compared_by_the_judges_rules(base):
    values = ("'a'", "'b'") if "str" in base.lower() else ("1", "2")
    program = src(f"""
        import enum
        class Lie({base}):
            A = {values[0]}
            B = {values[1]}
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            def __hash__(self):
                return 0
        def g():
            return Lie.A
    """)
    r = judged(
        program,
        "assert g() == Lie.B",
        "assert not g() != Lie.B",
        "assert {Lie.B: 1}.get(g()) == 1",
        "assert g() in [Lie.B]",
        "assert g() == Lie.A and g() is Lie.A",  # the right answer still passes
        entry_point="g",
    )
    assert [t.passed for t in r.tests] == [False] * 4 + [True], brief(r)


def test_a_metaclass_that_lies_about_members_sends_only_data():
    # Its __iter__, __members__, __contains__ and __instancecheck__ say whatever it likes, and the members'
    # __eq__ says yes: the class crosses as the data it reports, compared by the judge's rules.
    program = src("""
        import enum
        class Meta(enum.EnumMeta):
            def __iter__(cls):
                return iter([cls.B, cls.B])
            def __contains__(cls, item):
                return True
            def __instancecheck__(cls, obj):
                return True
            def __eq__(cls, other):
                return True
            __hash__ = type.__hash__
        class Lie(enum.Enum, metaclass=Meta):
            A = 1
            B = 2
            def __eq__(self, other):
                return True
            __hash__ = enum.Enum.__hash__
        def g():
            return Lie.A
    """)
    r = judged(
        program,
        "assert g() == Lie.B",
        "assert list(Lie) == [Lie.B, Lie.B]",
        "assert g() is Lie.A and list(Lie) == [Lie.A, Lie.B]",
        entry_point="g",
    )
    assert [t.passed for t in r.tests] == [False, False, True], brief(r)


def test_a_class_whose_members_report_raises_stays_a_handle():
    program = src("""
        import enum
        class Meta(enum.EnumMeta):
            @property
            def __members__(cls):
                raise ValueError('no')
        class Lie(enum.Enum, metaclass=Meta):
            A = 1
            B = 2
        def g():
            return Lie.A
    """)
    r = judged(program, "assert g() == Lie.B", "assert g() == Lie.A", entry_point="g")
    assert not r.tests[0].passed and r.tests[1].passed, brief(r)


def test_a_member_the_program_took_back_fails_the_run_cleanly():
    # The program drops a member from its class after reporting it: the member the test passes back is
    # refused in the program, and the test fails as a program that stopped answering.
    program = COLOR + "def g(c):\n    Color._member_map_.pop('GREEN', None)\n    return c\n"
    r = judged(program, "assert g(Color.RED) is Color.RED\nassert g(Color.GREEN) is Color.GREEN")
    assert_fails(r, "program stopped answering")
    assert_judge_still_judges()


def _parts(name="Color", kind="Enum", boundary=None, members=(("RED", 1), ("GREEN", 2))) -> list:
    return [name, kind, boundary, [list(m) for m in members]]


def _frame(tag: str, body: object) -> bytes:
    return json.dumps(["r", {tag: body}]).encode()


@pytest.mark.parametrize(
    "frame",
    [
        _frame("en", [_parts(), "BLUE"]),  # no such member
        _frame("en", [_parts(), 1]),  # a value is no name, but for a Flag
        _frame("en", [_parts(kind="Flag", boundary="strict", members=[("R", 4), ("W", 2)]), 1]),
        _frame("en", [_parts(kind="Flag", boundary="strict", members=[("R", 4), ("W", 2)]), 1 << 2000]),
        _frame("en", [_parts(kind="Flag", boundary="sideways"), "RED"]),
        _frame("en", [_parts(kind="Flag"), "RED"]),  # no boundary
        _frame("en", [_parts(boundary="keep"), "RED"]),  # a boundary for no Flag
        _frame("en", [_parts(kind="Matrix"), "RED"]),
        _frame("en", [_parts(kind="IntEnum", members=[("RED", "r")]), "RED"]),
        _frame("en", [_parts(kind="StrEnum", members=[("RED", 1)]), "RED"]),
        _frame("en", [_parts(members=[("RED", 1), ("RED", 2)]), "RED"]),
        _frame("en", [_parts(members=[("RED", {"h": 1, "o": "c"})]), "RED"]),
        _frame("en", [_parts(members=[("RED", {"l": [1]})]), "RED"]),
        _frame("en", [_parts(members=[("RED", {"i": "f" * 600})]), "RED"]),
        _frame("en", [_parts(members=[("RED", json.loads('{"t": [' * 10 + "]}" * 10))]), "RED"]),
        _frame("en", [_parts(members=[(f"M{i}", i) for i in range(MAX_MEMBERS + 1)]), "M1"]),
        _frame("en", [_parts(members=[("RED", "x" * MAX_ENUM_TEXT)]), "RED"]),
        _frame("en", [_parts(members=[]), "RED"]),
        _frame("en", [_parts(name="Color x"), "RED"]),
        _frame("en", [_parts(name="C" * 201), "RED"]),
        _frame("en", [_parts(name="_Color"), "RED"]),
        _frame("en", [_parts(members=[("mro", 1)]), "mro"]),
        _frame("en", [_parts(members=[("__class__", 1)]), "__class__"]),
        _frame("en", [_parts(members=[("_missing_", 1)]), "_missing_"]),
        _frame("en", [_parts(members=[("None", 1)]), "None"]),
        _frame("en", [_parts(members=[("a\nb", 1)]), "a\nb"]),
        _frame("en", [_parts(members=[("\u202eRED", 1)]), "\u202eRED"]),
        _frame("en", [_parts()]),
        _frame("en", _parts()),
        _frame("en", [[*_parts(), "extra"], "RED"]),
        _frame("ec", {"name": "Color"}),
    ],
    ids=["no-member", "value-ref", "strict-flag-value", "huge-flag-value", "bad-boundary", "no-boundary",
         "boundary-not-flag", "bad-kind", "int-kind-str", "str-kind-int", "twice", "handle-value", "list-value",
         "huge-int", "tuple-depth", "too-many", "too-long", "no-members", "class-name-space", "class-name-long",
         "class-name-private", "mro", "dunder", "sunder", "keyword", "newline", "bidi", "no-ref", "no-pair",
         "five-parts", "class-dict"],
)  # fmt: skip
def test_a_forged_enum_is_never_a_value_nor_an_error_the_test_expects(frame):
    program = sending(frame)
    assert_fails(judged(program, MUST_RAISE), "program stopped answering")


def test_more_forged_classes_than_a_run_takes_end_the_run():
    # Each new class costs the judge up to ~10 ms to make: a frame of thousands of them is refused after
    # MAX_RUN_ENUMS, and later runs are served normally.
    members = [{"en": [_parts(name=f"C{i}"), "RED"]} for i in range(2000)]
    frame = json.dumps(["r", {"l": members}]).encode()
    program = sending(frame)
    assert_fails(judged(program, "f()"), f"more than {MAX_RUN_ENUMS} Enum classes")
    assert_judge_still_judges()


def test_thrashing_the_enum_cache_keeps_it_bounded_and_later_runs_correct():
    program = "import enum\ndef f(i):\n    return enum.Enum(f'E{i}', ['A', 'B']).B\n"
    held = (
        "import sys\ncache = sys.modules['codefoundry_rpc'].crossing._ENUMS\n"
        f"assert len(cache) <= {MAX_ENUM_CLASSES}, len(cache)\n"
    )
    for k in range(3):  # 180 classes, more than the judge keeps
        assert_passes(
            judged(program, f"for i in range({k * 60}, {k * 60 + 60}):\n    assert f(i).value == 2", held)
        )
    assert_judge_still_judges()


def test_a_program_reporting_different_members_each_time_gets_different_classes():
    # Its Color of one call is no class of another: members of the two compare unequal.
    program = src("""
        import enum
        n = [0]
        def f():
            n[0] += 1
            return enum.Enum('Color', ['RED'] * 1 + [f'X{n[0]}']).RED
    """)
    r = judged(program, "assert f() == f()", "a = f()\nassert type(a) is type(a) and a is a")
    assert not r.tests[0].passed and r.tests[1].passed, brief(r)


# -- the codec in one process -----------------------------------------------------------------------------
@pytest.fixture
def pair():
    a_to_b, b_to_a = os.pipe(), os.pipe()
    yield rpc.Channel(b_to_a[0], a_to_b[1], "j"), rpc.Channel(a_to_b[0], b_to_a[1], "c")
    for fd in (*a_to_b, *b_to_a):
        os.close(fd)


def _across(sender: rpc.Channel, receiver: rpc.Channel, value: object) -> object:
    crossed = receiver.decode(json.loads(json.dumps(sender.encode(value))))
    if isinstance(crossed, rpc.Remote):  # its operations (pytest's repr of it too) would wait for a reply
        pytest.fail("a handle, not a value")
    return crossed


class Shade(enum.Enum):
    LIGHT = 1
    DARK = (2, "x", None, 0.5, b"b")


def test_a_member_crosses_to_the_judges_class_and_back_to_the_senders(pair):
    judge, program = pair
    light = _across(program, judge, Shade.LIGHT)
    assert type(light) is not Shade and light.name == "LIGHT" and light.value == 1
    assert _across(program, judge, Shade.LIGHT) is light and _across(program, judge, Shade) is type(light)
    assert _across(program, judge, Shade.DARK).value == (2, "x", None, 0.5, b"b")
    assert _across(judge, program, light) is Shade.LIGHT and _across(judge, program, type(light)) is Shade
    assert program.exported == {}  # nothing held for the run


def test_a_tests_own_enum_is_not_sent_as_the_programs(pair):
    judge, program = pair
    assert "h" in judge.encode(Shade.LIGHT)  # a handle, as before
    with pytest.raises(rpc.PeerGone, match="did not send"):
        program.decode({"ec": _parts()})


def test_a_class_the_judge_dropped_from_its_cache_stays_the_same_for_the_run(pair, monkeypatch):
    judge, program = pair
    monkeypatch.setattr(crossing, "MAX_ENUM_CLASSES", 1)
    first = _across(program, judge, Shade.LIGHT)
    for i in range(3):
        _across(program, judge, enum.Enum(f"Other{i}", ["A"]).A)
    assert len(crossing._ENUMS) == 1 and _across(program, judge, Shade.LIGHT) is first
