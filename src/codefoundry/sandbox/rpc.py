"""Plain-data RPC between a judged program and its judge, two processes that do not trust each other.

Loaded by path into the sandbox zygote (standard library only, no package imports). The judge calls
functions defined by the program; arguments and results cross as plain data (None, bool, int, float,
complex, str, bytes, list, tuple, dict, set, frozenset), rebuilt on the other side from exact builtin types,
so a returned object can carry no behaviour of its own into the judge. Subclasses of builtin types are
converted through the base type's own methods (an `int` subclass whose `__eq__` always says yes arrives as a
plain int). A few standard value types cross by value too, as tagged plain data rebuilt by the receiver
(so compared by value in the judge, by its own classes): `fractions.Fraction` (numerator and denominator),
`decimal.Decimal` (its exact text; a subclass arrives as a plain Decimal; a signaling NaN, whose `==`
raises, not at all), `range`, the `datetime` module's date, datetime, time, timedelta and timezone (their
fields; a tzinfo as its offset and name at that value, so a ZoneInfo arrives as a fixed-offset timezone),
numpy's scalars (as `item()`'s plain value: an `int64` is no int subclass), numpy arrays of exactly
`ndarray` whose dtype holds plain values (bool, numbers, fixed-width bytes and str: dtype, shape and bytes,
rebuilt by the receiver's numpy, imported only when one arrives; at most 8 MB of content; a call's
in-place changes to one cross back), and namedtuples (type and field names and items; rebuilt as a
namedtuple class of the receiver's own, without any methods the sender's class had, so `p.x` works and
`p == (1, 2)` is tuple equality). Rebuilding is kept about linear in the frame: a Fraction's or range's
ints of more than 2**16 bits, a Decimal of more than 20,000 digits or magnitude, and names of more than
200 characters (a namedtuple's, an exception class's) are refused (crossing.py). Anything else stays where
it lives and travels as a handle; operations on a handle are forwarded to its owner, except comparisons
with a value from the other side, which are never forwarded (the owner would see the expected answer) and
are simply false.

An exception crosses as its type's name and message. A builtin exception is rebuilt as itself; one of a
class the program defines, as a judge-made class of the same name whose bases are judge-made classes of
the program's classes above it, down to the nearest builtin exception (`except ValueError` catches the
program's `class Invalid(ValueError)`, and `except Base` its `class Sub(Base)`, as in one process); any
other as `RemoteError`. A test naming an exception class of the program (`except Invalid`, `isinstance(e,
Invalid)`, `raise Invalid`) gets that judge-made class; multiple inheritance is flattened to the order of
the class's MRO. A name the program binds to AssertionError or one of its bases (`Invalid = Exception`)
stays a handle: `except Invalid` around the test's own `assert False` would catch the failed assert.

Members of the program's `enum.Enum` classes (IntEnum, StrEnum, Flag, IntFlag, an int or str mixin) cross
as their class's name, kind, members' names and plain values, and their own name: the judge rebuilds them
as members of an Enum class of its own, the same class for the same data, which a test naming the
program's class gets too (`f() is Color.RED`; `==` by the standard Enum rules, never the program's
`__eq__`; its methods and its own Enum bases do not come along), and one passed back is the program's own
again. One of more than 256 members, or of values other than scalars and tuples of them, stays what it
was (a handle; an IntEnum's member, a plain int). See crossing.py.

A call's arguments cross by value, so a function that changes a list, dict, set, bytearray or numpy array
argument in place changes its own copy: the reply carries the new contents of each such argument that
changed, and the caller puts them into its own objects (`x = [3, 1]; sort_in_place(x); assert x == [1, 3]`
works, as in one process, where the program could change `x` too). Inner containers are replaced, not
changed: a test holding `inner = x[0]` from before the call sees the old one.

Not supported (they stay handles, so `==` with a value the judge made is false, and the test fails):
instances of other classes (dataclasses, numpy arrays of objects, records, datetime64 or of a subclass,
compared with values the test builds itself), exception instances returned as values, and a test's
`isinstance` naming a class of the program that is no exception or Enum (the name is a handle there, not
a class). Two handles of the program's objects compare in the program (`f() == Point(1, 2)` with the
program's own `Point`, as in one process).

Builtin types themselves (`int`, `str`, ...) travel by name. Top-level test code that uses a name it does
not define and that is no builtin (a class the solution defines, say) gets the program's object of that
name as a handle.

A frame is a 4-byte big-endian length and a UTF-8 JSON body of at most MAX_FRAME (16 MB): a larger value
(a list of some two million ints) cannot cross, and its test fails as if the program stopped answering.
Messages:
request  ["q", op, *operands]; reply ["r", encoded value] or ["e", exception type name, message], with the
names of the classes it derives from last (nearest first, ending with a builtin) when its type is not a
builtin.
Strings, booleans, None, floats (JSON's shortest round-trip form, with NaN and Infinity: both ends are
Python) and ints under 2**53 travel as themselves; everything else as a one-key tagged object (larger
ints in hexadecimal, which CPython converts in linear time and without its 4300-digit limit on decimal
text). A judged run makes ~10 calls each way, so the common case, a flat list of such scalars, skips the
per-item walk on both sides.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import struct
import sys

# crossing.py as the zygote loaded it (zygote._load registers the modules it loads), or as a package module.
crossing = sys.modules.get("codefoundry_crossing") or importlib.import_module("codefoundry.sandbox.crossing")
RemoteError = crossing.RemoteError

MAX_FRAME = 16 << 20
MAX_DEPTH = 100
# No more than a frame can hold (an item and its comma take two bytes at least): at 1,000,000 a correct
# solution returning list(range(1_500_000)), an 11 MB frame, failed as a program that stopped answering.
MAX_ITEMS = MAX_FRAME // 2
_PLAIN_TYPES = (
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    list,
    tuple,
    dict,
    set,
    frozenset,
    type(None),
)
# Built once: json.dumps with any non-default argument builds a new encoder per call, and json.loads of
# bytes first guesses their encoding; a judged run makes ~10 calls each way.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_decode_json = json.JSONDecoder().decode
_PLAIN_TYPE_NAMES = {t.__name__: t for t in _PLAIN_TYPES}
_INT_LIMIT = 1 << 53  # larger ints travel as hexadecimal strings
_RAW = frozenset({str, bool, float, type(None)})  # scalars that are their own JSON encoding
_NUMBERS = frozenset({int, bool, float})
_JSON_SCALARS = _RAW | {int}  # what a JSON array's items decode to, tags aside
_COLLECTION_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "f"}
_COLLECTIONS = {"l": list, "t": tuple, "s": set, "f": frozenset}  # the types themselves travel by name
JUDGE_MODULE = "__judge__"  # the __name__ test code runs under, and so the __module__ of its classes
JUDGE_SERVES = frozenset({"call", "iter", "next", "len", "bool", "str", "repr", "hash", "contains", "getitem",
                          "float", "int", "index"})  # fmt: skip


class PeerGone(BaseException):
    """The other process closed the channel or sent something that is not a valid message. A
    BaseException, so that test code's `except Exception:` cannot take a program that stopped answering
    for one that raised (a test expecting an error would pass); `run_judge` catches it."""


class Channel:
    """One end of the conversation: a read fd, a write fd, and this side's table of exported objects."""

    def __init__(self, rfd: int, wfd: int, side: str, namespace: dict | None = None) -> None:
        self.rfd, self.wfd, self.side = rfd, wfd, side
        self.namespace = namespace if namespace is not None else {}
        self.exported: dict[int, object] = {}
        self._next_id = 1
        self._pending = b""  # read past the last frame (a frame's header and body come in one read)
        self._changed: list = []  # the last call's changed arguments (crossing.changed_arguments)
        self.enums = crossing.EnumTable(side)  # the Enum classes that crossed in this run

    # -- framing ---------------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        data = self._pending
        if len(data) < n:
            chunks, have = [data], len(data)
            while have < n:  # at least 4 KiB a read: a frame's header and body, when small, in one
                chunk = os.read(self.rfd, max(n - have, 4096))
                if not chunk:
                    raise PeerGone("the other side closed the channel")
                chunks.append(chunk)
                have += len(chunk)
            data = b"".join(chunks)
        self._pending = data[n:]
        return data[:n]

    def recv(self) -> list:
        (size,) = struct.unpack(">I", self._read(4))
        if size > MAX_FRAME:
            raise PeerGone(f"message of {size} bytes is over the {MAX_FRAME} byte limit")
        body = self._read(size)
        try:
            msg = _decode_json(body.decode("utf-8"))
        except Exception as e:  # ValueError, or RecursionError for JSON nested 100,000 deep
            raise PeerGone(f"malformed message: {type(e).__name__}") from None
        if not isinstance(msg, list) or not msg or msg[0] not in ("q", "r", "e"):
            raise PeerGone("malformed message")
        return msg

    def send(self, msg: list) -> None:
        body = _encode_json(msg).encode()
        data = struct.pack(">I", len(body)) + body
        try:
            written = os.write(self.wfd, data)
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(self.wfd, view) :]
        except OSError as e:
            raise PeerGone(f"cannot write to the other side: {e}") from None

    # -- encoding ---------------------------------------------------------------------------------
    def export(self, obj: object) -> dict:
        oid = self._next_id
        self._next_id += 1
        self.exported[oid] = obj
        return {"h": oid, "o": self.side}

    def encode(self, obj: object, depth: int = 0) -> object:
        if depth > MAX_DEPTH:
            raise ValueError("value nested too deeply to send")
        t = type(obj)
        if t in _RAW:
            return obj
        if t is int:
            # Not decimal: str() of an int past 4300 digits raises, and a correct 3000! failed its test.
            return obj if -_INT_LIMIT < obj < _INT_LIMIT else {"i": format(obj, "x")}
        tag = _COLLECTION_TAGS.get(t)
        if tag is not None:
            items = obj if t is list else list(obj)
            return {tag: items if _all_raw(items) else [self.encode(v, depth + 1) for v in items]}
        if t is dict:
            return {"d": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in obj.items()]}
        if t is bytes or t is bytearray:
            return {"b" if t is bytes else "ba": bytes.hex(bytes(obj))}
        if t is complex:
            return {"c": [float.hex(obj.real), float.hex(obj.imag)]}
        if t is type and obj in _PLAIN_TYPES:
            return {"y": obj.__name__}
        if isinstance(obj, Remote) and obj._channel is self:
            return {"h": obj._oid, "o": obj._owner}
        value = self._encode_value(obj, t, depth)
        if value is not None:
            return value
        base = _builtin_base(t)
        if base is not None:
            return self.encode(_as_base(obj, base), depth)
        return self.export(obj)

    def _encode_value(self, obj: object, t: type, depth: int) -> dict | None:
        """A standard value type's tagged form (see the module docstring), or None."""
        if t is range:
            return {"rg": [self.encode(obj.start, depth + 1), self.encode(obj.stop, depth + 1),
                           self.encode(obj.step, depth + 1)]}  # fmt: skip
        fractions, decimal = sys.modules.get("fractions"), sys.modules.get("decimal")
        mro = t.__mro__
        if fractions is not None and fractions.Fraction in mro:
            return {"q": [self.encode(obj.numerator, depth + 1), self.encode(obj.denominator, depth + 1)]}
        if decimal is not None and decimal.Decimal in mro:
            return {"m": decimal.Decimal.__str__(obj)}
        parts = crossing.datetime_parts(obj, mro)
        if parts is not None:
            return {"dt": parts}
        numpy = sys.modules.get("numpy")
        if numpy is not None and getattr(numpy, "generic", None) in mro:
            return self.encode(crossing.numpy_item(obj, numpy), depth + 1)
        if numpy is not None and t is getattr(numpy, "ndarray", None):  # exact: np.matrix stays a handle
            parts = crossing.array_parts(obj, numpy)
            return None if parts is None else {"nd": parts}
        enum = crossing.enum_value(obj, t, self.enums, self.encode)  # before an IntEnum's plain int
        if enum is not None:
            return enum
        fields = crossing.namedtuple_fields(t) if tuple in mro else None
        if fields is None:
            return None
        items = [self.encode(v, depth + 1) for v in tuple.__iter__(obj)]
        return {"n": [t.__name__, list(fields), items]} if len(items) == len(fields) else None

    def _decode_value(self, tag: str, body: object, depth: int) -> object:
        """A value `_encode_value` tagged, rebuilt from checked plain data by this side's own classes."""
        if tag == "rg" or tag == "q":  # Fraction() reduces by the gcd, range() divides: both capped
            return crossing.number_value(tag, [self.decode(x, depth + 1) for x in body], PeerGone)
        if tag == "m":
            return crossing.decimal_value(body, PeerGone)
        if tag == "dt":
            return crossing.datetime_value(body, PeerGone)
        if tag == "nd":
            return crossing.array_value(body, PeerGone)
        if tag == "en" or tag == "ec":
            return crossing.enum_decoded(tag, body, self.enums, lambda x: self.decode(x, depth + 1), PeerGone)
        typename, fields, items = body  # type: ignore[misc]
        if type(typename) is not str or type(fields) is not list or type(items) is not list:
            raise PeerGone("malformed namedtuple")
        fields = tuple(fields)
        if len(fields) != len(items) or crossing.namedtuple_fields(typename, fields) is None:
            raise PeerGone("malformed namedtuple")
        return crossing.namedtuple_class(typename, fields)._make([self.decode(x, depth + 1) for x in items])

    def decode(self, v: object, depth: int = 0) -> object:
        if depth > MAX_DEPTH:
            raise PeerGone("value nested too deeply")
        if type(v) in _RAW or type(v) is int:
            return v
        if type(v) is not dict or len(v) not in (1, 2):
            raise PeerGone("malformed value")
        if "h" in v:
            oid, owner = v.get("h"), v.get("o")
            if type(oid) is not int or owner not in ("c", "j"):
                raise PeerGone("malformed handle")
            if owner == self.side:
                if oid not in self.exported:
                    raise PeerGone("unknown handle")
                return self.exported[oid]
            return Remote(self, oid, owner)
        if len(v) != 1:  # a tagged value has exactly one key
            raise PeerGone("malformed value")
        ((tag, body),) = v.items()
        try:
            if tag == "i":
                return int(body, 16)
            kind = _COLLECTIONS.get(tag)
            if kind is not None:
                if type(body) is not list or len(body) > MAX_ITEMS:
                    raise PeerGone("malformed or too many items")
                if set(map(type, body)) <= _JSON_SCALARS:  # as JSON decodes them: already plain
                    return body if kind is list else kind(body)
                return kind([self.decode(x, depth + 1) for x in body])
            if tag == "d":
                return {self.decode(k, depth + 1): self.decode(x, depth + 1) for k, x in body}
            if tag == "b":
                return bytes.fromhex(body)
            if tag == "ba":
                return bytearray.fromhex(body)
            if tag == "c":
                return complex(float.fromhex(body[0]), float.fromhex(body[1]))
            if tag == "y" and body in _PLAIN_TYPE_NAMES:
                return _PLAIN_TYPE_NAMES[body]
            if tag in ("rg", "q", "m", "dt", "n", "nd", "en", "ec"):
                return self._decode_value(tag, body, depth)
        except PeerGone:
            raise
        except Exception as e:
            # Whatever rebuilding raised (OverflowError from a float out of range, ValueError, an exception a
            # handle's hash forwarded...) must not reach the test code as if the call had raised it: a test
            # that expects that exception would pass.
            raise PeerGone(f"malformed value: {type(e).__name__}: {e}") from None
        raise PeerGone(f"unknown value tag {tag!r}")

    # -- calls ------------------------------------------------------------------------------------
    def request(self, op: str, *operands: object, passed: tuple | None = None) -> object:
        """Send a request and wait for its reply, serving the other side's nested requests meanwhile
        (a callback the program makes into a function the judge passed it). `passed`: a call's (args,
        kwargs), which take the changes the callee made to them (`crossing.write_back`)."""
        self.send(["q", op, *operands])
        while True:
            msg = self.recv()
            if msg[0] == "q":
                self.serve_one(msg)
                continue
            if msg[0] == "r" and (len(msg) == 2 or (len(msg) == 3 and passed is not None)):
                value = self.decode(msg[1])
                if len(msg) == 3:
                    crossing.write_back(passed, msg[2], self.decode, PeerGone)
                return value
            if msg[0] == "e" and len(msg) in (3, 4):
                error = crossing.rebuild_exception(msg[1], msg[2], msg[3] if len(msg) == 4 else None)
                if isinstance(error, StopIteration) and op != "next":
                    # As Python does for generators (PEP 479): a StopIteration out of a call would silently
                    # end the map(), filter() or zip() the test iterates, and all() of nothing is True.
                    error = RuntimeError(f"the program raised StopIteration ({op})")
                raise error
            raise PeerGone("malformed reply")

    def serve_one(self, msg: list) -> None:
        try:
            value = self._perform(msg[1], msg[2:])
            reply = ["r", self.encode(value)]
            if msg[1] == "call" and self._changed:  # set by this call, after any nested ones
                reply.append(self._changed)
        except PeerGone:
            raise
        except BaseException as e:  # the program's own exceptions, reported to the caller
            if isinstance(e, (SystemExit, KeyboardInterrupt)):
                raise
            reply = ["e", type(e).__name__, _short(e)]
            if getattr(builtins, reply[1], None) is not type(e):  # the program's own: its lineage too
                reply.append(crossing.exception_lineage(type(e)))
        self.send(reply)

    def serve_forever(self) -> None:
        while True:
            try:
                msg = self.recv()
            except PeerGone:
                return
            if msg[0] != "q":
                return
            self.serve_one(msg)

    def _target(self, ref: object) -> object:
        if type(ref) is list and len(ref) == 2 and ref[0] == "name" and type(ref[1]) is str:
            if ref[1] not in self.namespace:
                raise NameError(f"name {ref[1]!r} is not defined")
            return self.namespace[ref[1]]
        obj = self.decode(ref)
        if isinstance(obj, Remote):
            raise PeerGone("request for an object this side does not own")
        return obj

    def _perform(self, op: object, operands: list) -> object:
        if not operands:
            raise PeerGone("request without a target")
        if self.side == "j" and op not in JUDGE_SERVES and not _plain_judge_attribute(op, operands, self):
            # The program may only use what a test handed it (call a callback, iterate an iterator, read
            # public fields of instances of classes the test code defined): no path from a handle to the
            # judge's internals (a function's globals, a type's subclasses, builtins).
            raise PermissionError(f"operation {op!r} on a judge object is not allowed")
        target = self._target(operands[0])
        args = [self.decode(x) for x in operands[1:]]
        if op == "call":
            pos, kw = args
            snap = crossing.snapshot(pos, kw, self.encode) if pos or kw else {}
            value = target(*pos, **kw)
            self._changed = crossing.changed_arguments(pos, kw, snap, self.encode) if snap else []
            return value
        if op == "getattr":
            return getattr(target, args[0])
        if op == "setattr":
            setattr(target, args[0], args[1])
            return None
        if op == "getitem":
            return target[args[0]]
        if op == "setitem":
            target[args[0]] = args[1]
            return None
        if op == "delitem":
            del target[args[0]]
            return None
        if op == "eq":  # only ever between two of this side's own objects
            return bool(target == args[0])
        unary = {
            "len": len, "iter": iter, "next": next, "bool": bool, "str": str, "repr": repr,
            "hash": hash, "float": float, "int": int, "index": _index,
            "exists": crossing.exception_identity,
        }  # fmt: skip
        if op in unary:
            return unary[op](target)
        if op == "contains":
            return args[0] in target
        raise PeerGone(f"unknown operation {op!r}")


class Remote:
    """A handle to an object that lives on the other side."""

    __slots__ = ("_channel", "_oid", "_owner")

    def __init__(self, channel: Channel, oid: int, owner: str) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_oid", oid)
        object.__setattr__(self, "_owner", owner)

    def _ref(self) -> dict:
        return {"h": self._oid, "o": self._owner}

    def _op(self, op: str, *args: object) -> object:
        ch = self._channel
        return ch.request(op, self._ref(), *[ch.encode(a) for a in args])

    def __call__(self, *args: object, **kwargs: object) -> object:
        ch = self._channel
        return ch.request(
            "call", self._ref(), ch.encode(list(args)), ch.encode(kwargs), passed=(args, kwargs)
        )

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._op("getattr", name)

    def __setattr__(self, name: str, value: object) -> None:
        self._op("setattr", name, value)

    def __getitem__(self, key: object) -> object:
        return self._op("getitem", key)

    def __setitem__(self, key: object, value: object) -> None:
        self._op("setitem", key, value)

    def __delitem__(self, key: object) -> None:
        self._op("delitem", key)

    def __len__(self) -> int:
        n = self._op("len")
        if type(n) is not int:
            raise TypeError("len() of a remote object did not return an int")
        return n

    def __iter__(self) -> Remote:
        it = self._op("iter")
        if not isinstance(it, Remote):
            raise TypeError("iter() of a remote object returned a plain value")
        return it

    def __next__(self) -> object:
        return self._op("next")

    def __bool__(self) -> bool:
        return self._op("bool") is True

    def __str__(self) -> str:
        return _expect(self._op("str"), str)

    def __repr__(self) -> str:
        try:
            return _expect(self._op("repr"), str)
        except Exception:
            return f"<remote object {self._oid}>"

    def __hash__(self) -> int:
        return _expect(self._op("hash"), int)

    def __float__(self) -> float:
        return _expect(self._op("float"), float)

    def __int__(self) -> int:
        return _expect(self._op("int"), int)

    def __index__(self) -> int:
        return _expect(self._op("index"), int)

    def __contains__(self, item: object) -> bool:
        # Forwarded only for a handle of the same owner, as for ==: `expected in result` must not hand the
        # expected value to the program. Otherwise by iteration, as Python does for a class without
        # __contains__, comparing the plain values here.
        if isinstance(item, Remote) and item._channel is self._channel and item._owner == self._owner:
            return self._op("contains", item) is True
        return any(value is item or value == item for value in self)

    def __eq__(self, other: object) -> bool:
        # Forwarded only between two handles of the same owner: the owner never sees our values.
        if isinstance(other, Remote) and other._channel is self._channel and other._owner == self._owner:
            return self._op("eq", other) is True
        return other is self

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: object) -> bool:
        return NotImplemented

    __le__ = __gt__ = __ge__ = __lt__


def _plain_judge_attribute(op: object, operands: list, channel: Channel) -> bool:
    """getattr/setattr of a public name on an instance of a class defined by the judge's own test code
    (e.g. a linked-list node the tests build and hand over)."""
    if op not in ("getattr", "setattr") or len(operands) < 2 or type(operands[1]) is not str:
        return False
    if operands[1].startswith("_"):
        return False
    try:
        target = channel._target(operands[0])
    except Exception:
        return False
    cls = type(target)
    if getattr(cls, "__module__", None) != JUDGE_MODULE or isinstance(target, type):
        return False
    if op == "setattr":
        # Never over a method or other descriptor of the class: an instance attribute would shadow it,
        # and the test's own `node.holds(2)` would run the program's function.
        for klass in cls.__mro__:
            if operands[1] in vars(klass):
                attr = vars(klass)[operands[1]]
                return not (callable(attr) or hasattr(type(attr), "__get__"))
    return True


def _index(obj: object) -> int:
    return obj.__index__()  # type: ignore[attr-defined]


def _expect(value: object, kind: type) -> object:
    if type(value) is not kind:
        raise TypeError(f"remote object returned {type(value).__name__}, expected {kind.__name__}")
    return value


def _all_raw(items: list) -> bool:
    """Whether every item travels as itself (see the module docstring), checked at C speed."""
    kinds = set(map(type, items))
    if kinds <= _RAW:
        return True
    if not kinds <= _NUMBERS:
        return False
    # Comparisons with NaN are false, so a NaN can only make these fail (and the items take the slow way).
    return min(items) > -_INT_LIMIT and max(items) < _INT_LIMIT


def _builtin_base(t: type) -> type | None:
    for base in (bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset):
        if issubclass(t, base):
            return base
    return None


def _as_base(obj: object, base: type) -> object:
    """The plain value of a builtin subclass, read through the base type's own slots only."""
    if base is int or base is bool:
        return int.__int__(obj)  # type: ignore[arg-type]
    if base is float:
        return float.__float__(obj)  # type: ignore[arg-type]
    if base is complex:
        return complex(float.__float__(complex.real.__get__(obj)), float.__float__(complex.imag.__get__(obj)))
    if base is str:
        return str.__str__(obj)  # type: ignore[arg-type]
    if base in (bytes, bytearray):
        return bytes.fromhex(base.hex(obj))  # type: ignore[attr-defined]
    if base is dict:
        return {k: v for k, v in dict.items(obj)}  # type: ignore[arg-type]
    return base(base.__iter__(obj))  # type: ignore[attr-defined]


def _short(e: BaseException, limit: int = 300) -> str:
    try:
        text = str(e)
    except Exception:
        text = "<unprintable>"
    return text[:limit]
