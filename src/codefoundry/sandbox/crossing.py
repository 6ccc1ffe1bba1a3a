"""What crosses the judge channel beyond plain data (rpc.py): the checks on a namedtuple's names, the
classes the receiver rebuilds values and exceptions with, and the program's exceptions rebuilt in the judge.

Loaded by path into the sandbox zygote before rpc.py (standard library only, no package imports). Whatever
the other side sends is data: a value is rebuilt here only from names and numbers checked first, by the
receiver's own classes (a judge-made namedtuple class, the judge's `Fraction`, `Decimal` and `datetime`
classes, its numpy's `ndarray` from a checked dtype, shape and bytes), so nothing of the sender's behaviour
comes with it. numpy, which is optional, is imported only when an array arrives. Classes made here are
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
    the class the program's `Invalid` errors are rebuilt as; True for anything else. A lie gets the test
    no more than the program's own choice of what to raise."""
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return [obj.__name__, exception_lineage(obj)]
    return True


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
