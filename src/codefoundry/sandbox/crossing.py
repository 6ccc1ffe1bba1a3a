"""What crosses the judge channel beyond plain data (rpc.py): the checks on a namedtuple's names, the
classes the receiver rebuilds values and exceptions with, and the program's exceptions rebuilt in the judge.

Loaded by path into the sandbox zygote before rpc.py (standard library only, no package imports). Whatever
the other side sends is data: a value is rebuilt here only from names and numbers checked first, by the
receiver's own classes (a judge-made namedtuple or Enum class, the judge's `Fraction`, `Decimal` and
`datetime` classes, its numpy's `ndarray` from a checked dtype, shape and bytes), so nothing of the sender's
behaviour comes with it. numpy, which is optional, is imported only when an array arrives. Classes made here are
cached, a bounded number per process (the judge lives across runs).
"""

import builtins
import collections
import importlib
import json
import keyword
import sys

VALUE_MODULES = ("fractions", "decimal", "datetime")  # whose values cross by value (tags "q", "m", "dt"),
# imported on use
MAX_FIELDS = 256  # a namedtuple with more fields crosses as a plain tuple
MAX_FRACTION_BITS = 1 << 16  # a Fraction's numerator and denominator at most (its gcd takes ~8 ms then)
# and a range's start, stop and step: range() divides them at once for its length, quadratic in the size
# (2**21 bits: 1.6 s; a frame holds 2**26).
MAX_DECIMAL_DIGITS = 20_000  # ~2**16 bits: a Decimal's digits, and its magnitude (int() of one is quadratic:
# int(Decimal('1E+400000')), a 12-byte frame, took 4.7 s in a test's round(f()))
MAX_NAME = 200  # characters of a namedtuple's or exception class's name (classes are kept across runs)
MAX_CLASSES = 256  # namedtuple classes, and program exception classes, kept per process
MAX_LINEAGE = 16  # the program's own exception classes above one that are rebuilt too
SAFE_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, Exception) and not name.startswith("_")
} - {"StopAsyncIteration"}


class RemoteError(Exception):
    """An exception raised on the other side whose type is not a builtin exception."""


def namedtuple_fields(t: type | str, fields: object = None) -> tuple[str, ...] | None:
    """A namedtuple type's field names (given a type), or, given a type name and field names, those if they
    could make one: names `collections.namedtuple` accepts, at most MAX_FIELDS of them; else None."""
    if not isinstance(t, str):
        fields, t = getattr(t, "_fields", None), t.__name__
    if type(fields) is not tuple or len(fields) > MAX_FIELDS or len(set(fields)) != len(fields):
        return None
    for i, name in enumerate((t, *fields)):
        if type(name) is not str or len(name) > MAX_NAME:
            return None
        if not name.isidentifier() or keyword.iskeyword(name):
            return None
        if i and name.startswith("_"):
            return None
    return fields


_NAMEDTUPLES: dict[tuple[str, tuple[str, ...]], type] = {}


def namedtuple_class(typename: str, fields: tuple[str, ...]) -> type:
    """This side's own namedtuple class of these (checked: `namedtuple_fields`) names."""
    kind = _NAMEDTUPLES.get((typename, fields))
    if kind is None:
        if len(_NAMEDTUPLES) >= MAX_CLASSES:
            _NAMEDTUPLES.clear()
        kind = _NAMEDTUPLES[typename, fields] = collections.namedtuple(typename, fields)
    return kind


def value_module(name: str):
    """fractions or decimal, imported on first use (neither is among the modules the zygote preloads)."""
    return sys.modules.get(name) or importlib.import_module(name)


def number_value(tag: str, numbers: list, malformed: type) -> object:
    """The range ("rg": start, stop, step) or Fraction ("q": numerator, denominator) of these decoded
    numbers; a `malformed` error for any that is no int or is too large to rebuild cheaply."""
    if len(numbers) != (3 if tag == "rg" else 2) or any(type(n) is not int for n in numbers):
        raise malformed(f"malformed value {tag!r}")
    if max(abs(n).bit_length() for n in numbers) > MAX_FRACTION_BITS:
        raise malformed(f"a {'range' if tag == 'rg' else 'Fraction'} over {MAX_FRACTION_BITS} bits")
    return range(*numbers) if tag == "rg" else value_module("fractions").Fraction(*numbers)


def decimal_value(text: object, malformed: type) -> object:
    """The Decimal of this text; a `malformed` error for a signaling NaN (`==` with one raises: a test's
    comparison must not) or one of more than MAX_DECIMAL_DIGITS digits or magnitude."""
    if type(text) is not str:
        raise malformed("malformed decimal")
    if len(text) > MAX_DECIMAL_DIGITS + 40:  # digits, a sign, a point and an exponent
        raise malformed(f"a Decimal over {MAX_DECIMAL_DIGITS} digits")
    value = value_module("decimal").Decimal(text)
    if value.is_snan():
        raise malformed("malformed decimal: a signaling NaN")
    digits = len(value.as_tuple().digits) if value.is_finite() else 0
    if digits > MAX_DECIMAL_DIGITS or (digits and abs(value.adjusted()) > MAX_DECIMAL_DIGITS):
        raise malformed(f"a Decimal over {MAX_DECIMAL_DIGITS} digits")
    return value


# -- datetime values (tag "dt") -----------------------------------------------------------------------------
# [kind, ints...]; a date/datetime/time's tzinfo crosses as a fixed offset ([microseconds, name or None]).
_DATETIME_FIELDS = {
    "date": ("year", "month", "day"),
    "datetime": ("year", "month", "day", "hour", "minute", "second", "microsecond", "fold"),
    "time": ("hour", "minute", "second", "microsecond", "fold"),
    "timedelta": ("days", "seconds", "microseconds"),
}


def datetime_parts(obj: object, mro: tuple) -> list | None:
    """The "dt" body of a `datetime` module value (of a subclass too, read through the base class's own
    slots: a pandas Timestamp arrives as a plain datetime), or None for anything else. An aware value's
    tzinfo crosses as its offset and name at that value (a ZoneInfo arrives as a fixed-offset timezone)."""
    dt = sys.modules.get("datetime")
    if dt is None:
        return None
    if dt.timezone in mro:
        return ["timezone", _zone(dt.timezone.utcoffset(obj, None), dt.timezone.tzname(obj, None))]
    kind = next((k for k in ("datetime", "date", "time", "timedelta") if getattr(dt, k) in mro), None)
    if kind is None:
        return None
    base = getattr(dt, kind)
    parts = [kind, *[getattr(base, name).__get__(obj) for name in _DATETIME_FIELDS[kind]]]
    if kind in ("datetime", "time"):
        aware = base.tzinfo.__get__(obj) is not None
        parts.append(_zone(base.utcoffset(obj), base.tzname(obj)) if aware else None)
    return parts


def _zone(offset: object, name: object) -> list | None:
    if offset is None:
        return None
    td = sys.modules["datetime"].timedelta
    micros = (td.days.__get__(offset) * 86400 + td.seconds.__get__(offset)) * 10**6
    return [micros + td.microseconds.__get__(offset), name[:MAX_NAME] if isinstance(name, str) else None]


def datetime_value(body: object, malformed: type) -> object:
    """The receiver's own date, datetime, time, timedelta or timezone of a `datetime_parts` body; a
    `malformed` error for anything else (the constructors check the ranges)."""
    if type(body) is not list or not body or type(body[0]) is not str:
        raise malformed("malformed datetime value")
    kind, *fields = body
    dt = value_module("datetime")
    if kind == "timezone" and len(fields) == 1 and fields[0] is not None:
        return _zone_value(fields[0], dt, malformed)
    names = _DATETIME_FIELDS.get(kind)
    aware = kind in ("datetime", "time")
    if names is None or len(fields) != len(names) + aware:
        raise malformed("malformed datetime value")
    ints = fields[: len(names)]
    if any(type(n) is not int for n in ints):
        raise malformed("malformed datetime value")
    if not aware:
        return getattr(dt, kind)(*ints)
    zone = None if fields[-1] is None else _zone_value(fields[-1], dt, malformed)
    return getattr(dt, kind)(*ints[:-1], tzinfo=zone, fold=ints[-1])


def _zone_value(zone: object, dt, malformed: type) -> object:
    if type(zone) is not list or len(zone) != 2 or type(zone[0]) is not int:
        raise malformed("malformed time zone")
    micros, name = zone
    if name is not None and (type(name) is not str or len(name) > MAX_NAME):
        raise malformed("malformed time zone name")
    offset = dt.timedelta(microseconds=micros)
    return dt.timezone(offset) if name is None else dt.timezone(offset, name)


def numpy_item(obj: object, numpy) -> object:
    """The plain Python value of a numpy scalar (an `int64` is no int subclass, and compared false as a
    handle); longdouble and clongdouble, whose `item()` keeps the type, as float and complex."""
    value = numpy.generic.item(obj)
    if isinstance(value, numpy.generic):
        value = complex(value) if isinstance(value, numpy.complexfloating) else float(value)
    return value


# -- numpy arrays (tag "nd") --------------------------------------------------------------------------------
# [dtype.str, shape, hex of the C-order bytes]: only what plain bytes hold (bool, ints, floats, complex,
# fixed-width bytes and str); object, structured, datetime64 arrays and subclasses stay handles. No handle
# comes along as a fallback: it would hold every array the sender sends for the whole run (a test of 100
# calls on 8 MB arrays, 800 MB), and both sides run one interpreter, so both have numpy or neither does.
ARRAY_KINDS = "biufcSU"
MAX_ARRAY_BYTES = (8 << 20) - 1024  # as hex (as a `bytes` value crosses), what a frame (rpc.MAX_FRAME,
# 16 MB) holds, less room for the reply around it: a larger one stays a handle rather than fill a frame
MAX_ARRAY_DIMS = 32  # numpy 1.x's own limit
MAX_DIMENSION = 1 << 62  # an empty array's other dimensions may be large, not past what numpy can index


def array_parts(obj: object, numpy) -> list | None:
    """[dtype, shape, hex] of an exact `numpy.ndarray` (the caller checks the type) whose dtype holds plain
    values and whose content is at most MAX_ARRAY_BYTES, else None. Sized before copying: a broadcast view
    (zero strides) of a billion items holds a few bytes but would copy gigabytes."""
    dtype = obj.dtype
    text, shape = dtype.str, obj.shape
    if not _array_dtype(text) or dtype.fields is not None or dtype.subdtype is not None or not dtype.itemsize:
        return None
    if len(shape) > MAX_ARRAY_DIMS or obj.size * dtype.itemsize > MAX_ARRAY_BYTES:
        return None
    return [text, list(shape), numpy.ndarray.tobytes(obj, order="C").hex()]


def _array_dtype(text: object) -> bool:
    """Whether `text` is the explicit-order `dtype.str` of a kind in ARRAY_KINDS ("<f8", "|b1", ">U3")."""
    return (
        type(text) is str
        and 3 <= len(text) <= 8
        and text[0] in "<>|"
        and text[1] in ARRAY_KINDS
        and text[2:].isascii()
        and text[2:].isdigit()
    )


def numpy_module() -> object | None:
    """numpy, imported on the first array that arrives (never for plain values); None where it is absent."""
    try:
        return sys.modules.get("numpy") or importlib.import_module("numpy")
    except Exception:  # ImportError, or one of numpy's own start-up failures: an array is then refused
        return None


def array_value(body: object, malformed: type) -> object:
    """The receiver's own C-contiguous, writable `numpy.ndarray` of an `array_parts` body (its dtype, byte
    order included, and shape as sent); a `malformed` error for anything else: a dtype outside ARRAY_KINDS
    or not numpy's own spelling of itself, a shape that does not match the bytes, content over
    MAX_ARRAY_BYTES, a str array holding no code point, or any array where numpy cannot be imported."""
    if type(body) is not list or len(body) != 3:
        raise malformed("malformed array")
    text, shape, data = body
    if not _array_dtype(text) or type(shape) is not list or type(data) is not str:
        raise malformed("malformed array")
    if len(shape) > MAX_ARRAY_DIMS or any(type(n) is not int or not 0 <= n <= MAX_DIMENSION for n in shape):
        raise malformed("malformed array shape")
    if len(data) > 2 * MAX_ARRAY_BYTES:
        raise malformed(f"an array over {MAX_ARRAY_BYTES} bytes")
    numpy = numpy_module()
    if numpy is None:  # only a program's own fake numpy makes arrays then
        raise malformed("an array, and numpy cannot be imported here")
    dtype = numpy.dtype(text)
    if dtype.str != text or dtype.kind != text[1] or not dtype.itemsize:
        raise malformed(f"malformed array dtype {text!r}")
    size = 1
    for n in shape:
        size *= n
    raw = bytes.fromhex(data)
    if size * dtype.itemsize != len(raw):
        raise malformed("an array whose bytes do not match its shape")
    array = numpy.frombuffer(raw, dtype=dtype).reshape(shape)  # a read-only view of `raw`, copied below
    if dtype.kind == "b":  # one byte each, but only 0 and 1 are a bool: 2 would compare unequal to True
        return array.view(numpy.uint8) != 0
    if dtype.kind == "U" and size and int(array.view(text[0] + "u4").max()) > 0x10FFFF:
        raise malformed("a str array holding no code point")  # numpy's str() of one raised SystemError
    return array.copy()


def exception_lineage(t: type) -> list[str]:
    """The names of the classes `t` derives from, nearest first, up to and ending with its nearest builtin
    exception class (["Base", "Exception"] for `class Sub(Base)` under `class Base(Exception)`): at most
    MAX_LINEAGE of the program's own. [] if it derives from none that may be rebuilt."""
    chain = []
    for klass in t.__mro__[1:]:
        name = getattr(klass, "__name__", "")
        if name in SAFE_EXCEPTIONS and getattr(builtins, name) is klass:
            return [*chain[:MAX_LINEAGE], name]
        chain.append(name)
    return []


# Builtin exceptions whose constructor takes more than a message.
_REBUILD = {
    "UnicodeDecodeError": lambda text: UnicodeDecodeError("utf-8", b"", 0, 0, text),
    "UnicodeEncodeError": lambda text: UnicodeEncodeError("utf-8", "", 0, 0, text),
    "UnicodeTranslateError": lambda text: UnicodeTranslateError("", 0, 0, text),
    "ExceptionGroup": lambda text: ExceptionGroup(text, [RemoteError(text)]),
}
_PROGRAM_EXCEPTIONS: collections.OrderedDict[tuple, type] = collections.OrderedDict()  # judge-made, by
# (name, lineage), least recently used first


def rebuild_exception(name: object, message: object, lineage: object = None) -> BaseException:
    """The other side's exception: the builtin of that name when there is one; else (a class the program
    defines) a judge-made class of that name under its `exception_lineage` (an `except ValueError` in a
    test catches the program's `class Invalid(ValueError)`, an `except Base` its `class Sub(Base)`, as in
    one process), or an instance of the lineage's builtin; else a RemoteError. Never anything that
    building it raised: a TypeError out of a constructor would reach a test expecting TypeError."""
    text = message if type(message) is str else ""
    if type(name) is not str or len(name) > MAX_NAME:  # a class named by megabytes, kept, and in the report
        return RemoteError(f"{str(name)[:MAX_NAME]}: {text}")
    if name in SAFE_EXCEPTIONS:
        try:
            return _REBUILD.get(name, getattr(builtins, name))(text)
        except Exception:
            return RemoteError(f"{name}: {text}")
    lineage = [lineage] if type(lineage) is str else lineage
    base = lineage[-1] if type(lineage) is list and lineage else None
    if type(base) is str and base in SAFE_EXCEPTIONS:
        try:
            return (program_exception_class(name, lineage) or getattr(builtins, base))(text)
        except Exception:  # a base whose constructor takes more than a message (UnicodeDecodeError...)
            try:
                return _REBUILD[base](f"{name}: {text}")
            except Exception:
                pass
    return RemoteError(f"{name}: {text}")


def program_exception_class(name: object, lineage: object) -> type | None:
    """The judge-made class the program's exceptions of class `name` under `lineage` (its
    `exception_lineage`) are rebuilt as: the same class each time, whose bases are the judge-made classes
    of its lineage, so a test's `except` of it or of a base catches them; the builtin itself for a
    builtin's name; None for names and lineages that make none."""
    if type(name) is not str or len(name) > MAX_NAME or type(lineage) is not list:
        return None
    if not 1 <= len(lineage) <= MAX_LINEAGE + 1:
        return None
    if any(type(n) is not str or len(n) > MAX_NAME for n in lineage):  # the cache's key holds them all
        return None
    if lineage[-1] not in SAFE_EXCEPTIONS:
        return None
    if name in SAFE_EXCEPTIONS:
        return getattr(builtins, name)
    if not name.isidentifier():
        return None
    key = (name, tuple(lineage))
    kind = _PROGRAM_EXCEPTIONS.get(key)
    if kind is None:
        parent = program_exception_class(lineage[0], lineage[1:]) if len(lineage) > 1 else None
        parent = parent or getattr(builtins, lineage[-1])
        kind = type(name, (parent,), {"__module__": "program", "__qualname__": name})
        _PROGRAM_EXCEPTIONS[key] = kind
        while len(_PROGRAM_EXCEPTIONS) > MAX_CLASSES:
            _PROGRAM_EXCEPTIONS.popitem(last=False)
    _PROGRAM_EXCEPTIONS.move_to_end(key)
    return kind


def exception_identity(obj: object) -> object:
    """What the program reports for a name a test looks up (the "exists" request): for an exception class,
    [its name, its `exception_lineage`], so the test's `except Invalid` or `isinstance(e, Invalid)` uses
    the class the program's `Invalid` errors are rebuilt as; an Enum class or member itself, which the
    test gets as the judge rebuilt it (`Color.RED` is then the judge-made class's member); True for
    anything else. A lie gets the test no more than the program's own choice of what to raise or define."""
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return [obj.__name__, exception_lineage(obj)]
    meta = getattr(sys.modules.get("enum"), "EnumType", None)
    if meta is not None and (issubclass(type(obj), meta) or issubclass(type(type(obj)), meta)):
        return obj  # an Enum class or member: by value where it can cross so (`enum_value`), else a handle
    return True


# -- Enum classes and members (tags "ec", "en") -------------------------------------------------------------
# A class crosses as its parts, [name, kind, boundary, [[member name, encoded value], ...]]: every name of
# its __members__, aliases too, in definition order; a Flag's boundary ("strict", "keep"...), else None. A
# member crosses as [parts, its name], a combination of a Flag's members as [parts, its int value]. The
# judge makes a class of its own of the parts, kept by their text (`_ENUMS`, across runs), so the members
# of two results and the test's `Color.RED` are the same objects, compared by the standard Enum rules (the
# program's `__eq__`, `__hash__` and other methods do not come along, nor its own Enum base classes). The
# program keeps the classes it sent by the same text, and a member the test passes it is its own again.
ENUM_KINDS = ("Enum", "IntEnum", "StrEnum", "Flag", "IntFlag", "int+Enum", "str+Enum")  # the last two:
# `class C(int, Enum)`. Other mixins (float, tuple...) stay what they were: a plain float, a handle.
_INT_KINDS, _STR_KINDS = ("IntEnum", "IntFlag", "Flag", "int+Enum"), ("StrEnum", "str+Enum")
_FLAG_KINDS, _BOUNDARIES = ("Flag", "IntFlag"), ("strict", "conform", "eject", "keep")
_ENUM_SCALARS = (str, float, bool, bytes, type(None))  # with bounded ints and tuples: an Enum's values
MAX_MEMBERS = 256  # names in an Enum's __members__: a class of 256 takes the judge ~10 ms to make
MAX_ENUM_TEXT = 1 << 16  # characters of an Enum's parts as text (the key the judge keeps it by)
MAX_ENUM_BITS = 1024  # an int value of an Enum (a Flag's operations loop over its bits)
MAX_RUN_ENUMS = 64  # Enum classes that cross in one run: more stay handles, or, sent anyway, end the run
MAX_ENUM_CLASSES = 128  # judge-made Enum classes kept per process, least recently used dropped first
_ENUMS: collections.OrderedDict[str, type] = collections.OrderedDict()


class EnumTable:
    """One channel's Enum classes, for one run: `classes` by the text of their parts (the judge's: those it
    made, kept for the run whatever `_ENUMS` drops, so a member arriving twice is one object; the program's:
    those it sent, for members coming back), and `parts` by class (None: one that cannot cross by value)."""

    def __init__(self, side: str) -> None:
        self.side, self.classes, self.parts = side, {}, {}


def enum_value(obj: object, t: type, table: EnumTable, encode) -> dict | None:
    """The tagged form of an Enum class or member; None for anything else and for what cannot cross by
    value: on the program's side a class `_enum_parts` refuses or past MAX_RUN_ENUMS, on the judge's one it
    did not make in this run (a test's own Enum)."""
    enum = sys.modules.get("enum")
    meta = enum and enum.EnumType  # a subclass of it too: what the class reports is data, checked here
    cls = None if not meta else obj if issubclass(t, meta) else t if issubclass(type(t), meta) else None
    parts = table.parts.get(cls, False) if cls is not None else None
    if parts is False and table.side == "c" and len(table.classes) < MAX_RUN_ENUMS:
        parts = table.parts[cls] = _enum_parts(cls, enum, encode)
        if parts is not None:
            table.classes[repr(parts)] = cls
    if not parts:
        return None
    if cls is obj:
        return {"ec": parts}
    ref, value = obj._name_, obj._value_
    if type(ref) is not str or cls.__members__.get(ref) is not obj:  # a combination of a Flag's members
        ref = value if parts[1] in _FLAG_KINDS and _enum_plain(value, "Flag") else None
    return None if ref is None else {"en": [parts, ref]}


def _enum_parts(cls: type, enum, encode) -> list | None:
    """The parts of one of the program's Enum classes (read in its own process, through its metaclass too:
    what it reports is data the judge checks), or None: a kind outside ENUM_KINDS, no members or more than
    MAX_MEMBERS, a name that is no public identifier, a value `_enum_plain` refuses."""
    try:
        standard = (enum.Enum, enum.IntEnum, enum.StrEnum, enum.Flag, enum.IntFlag)
        base = next(k for k in cls.__mro__ if any(k is s for s in standard))  # Enum at least
        kind, mixin = base.__name__, cls._member_type_
        if base is enum.Enum and (mixin is int or mixin is str):
            kind = f"{mixin.__name__}+Enum"
        elif mixin is not (int if kind in ("IntEnum", "IntFlag") else str if kind == "StrEnum" else object):
            return None
        boundary = getattr(cls, "_boundary_", None) if kind in _FLAG_KINDS else None
        members = list(cls.__members__.items())
        if not _enum_name(cls.__name__) or not 0 < len(members) <= MAX_MEMBERS:
            return None
        if kind in _FLAG_KINDS and type(boundary) is not enum.FlagBoundary:
            return None
        pairs = []
        for name, member in members:
            if type(member) is not cls or not _enum_name(name) or not _enum_plain(member._value_, kind):
                return None
            pairs.append([name, encode(member._value_)])
        parts = [cls.__name__, kind, boundary and boundary.value, pairs]
        return parts if len(repr(parts)) <= MAX_ENUM_TEXT else None
    except Exception:  # the program's own properties and hooks, raising
        return None


def _enum_name(name: object) -> bool:
    """Whether `name` may name an Enum class or member here: a public identifier of at most MAX_NAME."""
    if type(name) is not str or len(name) > MAX_NAME or not name.isidentifier() or name.startswith("_"):
        return False
    return not keyword.iskeyword(name) and name != "mro"  # "mro": the enum module refuses it too


def _enum_plain(value: object, kind: str, depth: int = 0) -> bool:
    """Whether `value` may be an Enum's member value of this kind: an int of at most MAX_ENUM_BITS for the
    int kinds, a str for the str kinds, else a scalar or a tuple of them (eight deep at most)."""
    t = type(value)
    if kind in _STR_KINDS:
        return t is str
    if t is int or kind in _INT_KINDS:
        return t is int and value.bit_length() <= MAX_ENUM_BITS
    if t is tuple:
        return depth < 8 and all(_enum_plain(v, kind, depth + 1) for v in value)
    return t in _ENUM_SCALARS


def enum_decoded(tag: str, body: object, table: EnumTable, decode, malformed: type) -> object:
    """The class or member of an `enum_value` body: on the judge's side, of the class it makes of these
    parts (`_made_enum`); on the program's, of its own class it sent with these parts. A `malformed` error
    for parts or a member it has not, and for parts over MAX_ENUM_TEXT or past MAX_RUN_ENUMS classes."""
    parts, ref = body if tag == "en" and type(body) is list and len(body) == 2 else (body, None)
    key = repr(parts)  # of decoded JSON: lists, dicts and scalars only
    if type(parts) is not list or len(key) > MAX_ENUM_TEXT or (tag == "en") == (ref is None):
        raise malformed("malformed or oversized Enum")
    cls = table.classes.get(key)
    if cls is None:
        if table.side != "j":
            raise malformed("an Enum class this program did not send")
        if len(table.classes) >= MAX_RUN_ENUMS:
            raise malformed(f"more than {MAX_RUN_ENUMS} Enum classes in one run")
        cls = table.classes[key] = _made_enum(key, parts, decode, malformed)
        table.parts[cls] = parts
    if tag == "ec":
        return cls
    member = cls.__members__.get(ref) if type(ref) is str else None
    if member is not None:
        return member
    if type(ref) is int and parts[1] in _FLAG_KINDS and _enum_plain(ref, "Flag"):
        return cls(ref)
    raise malformed("malformed Enum member")


def _made_enum(key: str, parts: list, decode, malformed: type) -> type:
    """The judge's own Enum class of these parts: the one made before for the same text, else a new one of
    the standard base of that kind, with these members, aliases and a Flag's boundary."""
    cls = _ENUMS.get(key)
    if cls is None:
        name, kind, boundary, pairs = parts if len(parts) == 4 else (None,) * 4
        flag = kind in _FLAG_KINDS
        bounded = boundary in (_BOUNDARIES if flag else [None])
        if not _enum_name(name) or kind not in ENUM_KINDS or not bounded:
            raise malformed("malformed Enum class")
        if type(pairs) is not list or not 0 < len(pairs) <= MAX_MEMBERS:
            raise malformed("malformed Enum members")
        if any(type(p) is not list or len(p) != 2 or not _enum_name(p[0]) for p in pairs):
            raise malformed("malformed Enum member name")
        members = [(n, decode(v)) for n, v in pairs]
        if not all(_enum_plain(v, kind) for _, v in members) or len({n for n, _ in members}) < len(members):
            raise malformed("malformed Enum member value, or a name given twice")
        enum = value_module("enum")
        options: dict = {"module": "program", "qualname": name}
        if flag:
            options["boundary"] = enum.FlagBoundary(boundary)
        mixin, _, base = kind.rpartition("+")
        if mixin:
            options["type"] = int if mixin == "int" else str
        cls = _ENUMS[key] = getattr(enum, base)(name, members, **options)
        while len(_ENUMS) > MAX_ENUM_CLASSES:
            _ENUMS.popitem(last=False)
    _ENUMS.move_to_end(key)
    return cls


# -- arguments changed in place --------------------------------------------------------------------------
MUTABLE = (list, dict, set, bytearray)  # exact types whose changes a call's reply carries back (and numpy's
# ndarray, by `_state`)


def snapshot(pos: list, kw: dict, encode) -> dict:
    """{position or keyword: its contents as JSON text} of a call's list, dict, set, bytearray and numpy
    array arguments, taken before the call (text: an encoded list of scalars is the list itself, and would
    change with it). One that cannot be encoded is left out."""
    snap = {}
    for key, arg in (*enumerate(pos), *kw.items()):
        state = _state(arg, encode)
        if state is not None:
            snap[key] = state[1]
    return snap


def changed_arguments(pos: list, kw: dict, snap: dict, encode) -> list:
    """[[position or keyword, new encoding], ...] for the arguments in `snap` whose contents the call
    changed. One that cannot be encoded now (nested too deeply) is left out: the call itself succeeded."""
    changes = []
    for key in snap:
        arg = pos[key] if type(key) is int else kw[key]
        state = _state(arg, encode)
        if state is not None and state[1] != snap[key]:
            changes.append([key, state[0]])
    return changes


def _state(arg: object, encode) -> tuple[object, str] | None:
    """(encoding, as JSON text) of an argument whose changes cross back, else None. Not an array that
    crosses as a handle: a new one each time, which the caller could not write into its array."""
    if type(arg) in MUTABLE:
        try:
            encoded = encode(arg)
        except ValueError:
            return None
        return encoded, json.dumps(encoded)
    numpy = sys.modules.get("numpy")
    if numpy is None or type(arg) is not getattr(numpy, "ndarray", None):
        return None
    parts = array_parts(arg, numpy)
    return None if parts is None else ({"nd": parts}, json.dumps(parts))


def write_back(passed: tuple, changes: object, decode, malformed: type) -> None:
    """Put a call's changed arguments' new contents (`changed_arguments`) into the caller's own objects:
    `passed` is the call's (args, kwargs). Only a list, dict, set or bytearray the caller passed takes them
    (or one of a subclass, a Counter, defaultdict or OrderedDict, which crossed as the plain one), and only
    contents of that builtin type, or a numpy array, only an array; anything else is a `malformed` reply."""
    args, kwargs = passed
    if type(changes) is not list:
        raise malformed("malformed changes")
    for change in changes:
        if type(change) is not list or len(change) != 2:
            raise malformed("malformed change")
        key, encoded = change
        if type(key) is int and 0 <= key < len(args):
            target = args[key]
        elif type(key) is str and key in kwargs:
            target = kwargs[key]
        else:
            raise malformed("a change to no argument")
        kind = next((base for base in MUTABLE if issubclass(type(target), base)), None)
        new = decode(encoded)
        numpy = sys.modules.get("numpy") if kind is None else None
        if numpy is not None and type(target) is numpy.ndarray and type(new) is numpy.ndarray:
            # In place, as in one process (a view the test passed writes through to its base); an array the
            # callee resized, or one the caller cannot write, keeps its old contents.
            if new.shape == target.shape and new.dtype == target.dtype and target.flags.writeable:
                target[...] = new
            continue
        if kind is None or type(new) is not kind:
            raise malformed("a change of an argument's type")
        if kind is list or kind is bytearray:
            target[:] = new
        else:
            target.clear()
            target.update(new)
