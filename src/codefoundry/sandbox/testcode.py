"""The judge's side of a judged run: trusted test code, run against the program over a channel.

Loaded by path into the sandbox zygote, after rpc.py (standard library only, no package imports). The
judge server (judge.py) calls `run_judge` once per judged run, in a fresh namespace; names the test code
uses but never defines come from the program (`_TestScope`), its standard-library objects excepted.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import types

# rpc.py as the zygote loaded it (zygote._load registers the modules it loads), or as a package module.
rpc = sys.modules.get("codefoundry_rpc") or importlib.import_module("codefoundry.sandbox.rpc")

# Standard modules of pure computation, and their C parts (heapq.heappush's __module__ is _heapq): those whose
# objects a test may rely on the solution's import for (`_TestScope._standard`).
PURE_MODULES = frozenset({
    "math", "cmath", "fractions", "decimal", "datetime", "zoneinfo", "calendar", "collections", "itertools",
    "functools", "operator", "heapq", "bisect", "string", "re", "statistics", "numbers", "typing", "copy",
    "random", "array", "enum", "dataclasses", "json", "textwrap", "unicodedata", "struct", "builtins",
    "_heapq", "_functools", "_operator", "_bisect", "_struct", "_collections", "_collections_abc", "_decimal",
    "_pydecimal", "_datetime", "_pydatetime", "_random", "_json", "_string", "_statistics",
})  # fmt: skip
# numpy's namespaces a test may get the judge's own objects of, for the solution's names (`_numpy_object`)
# and modules (`_numpy`): those of pure computation. Not numpy.lib (format.open_memmap), ctypeslib
# (load_library loads a shared library), f2py (compiles), random (seed: the judge's state), nor of
# numpy.testing anything but its assertions (runstring and measure run a string, rundocs a file's doctests,
# extbuild compiles and imports C). A lie gets the genuine object of the very name the test wrote, called
# with the test's arguments: `save(...)` for a problem "implement save" wrote a file in the judge.
NUMPY_NAMESPACES = frozenset({"numpy", "numpy.linalg", "numpy.fft", "numpy.testing"})
# numpy's own names that read or write files, print, or set the judge's state past the call
NUMPY_UNSAFE = frozenset({
    "save", "savez", "savez_compressed", "savetxt", "load", "loadtxt", "genfromtxt", "fromfile", "fromregex",
    "memmap", "info", "show_config", "show_runtime", "set_printoptions", "setbufsize", "seterr", "seterrcall",
})  # fmt: skip
_CODE_CACHE: dict[tuple[str, str], object] = {}


def _compiled(source: str, filename: str):
    """Test code repeats across the samples of a problem: compile it once per judge process."""
    key = (source, filename)
    code = _CODE_CACHE.get(key)
    if code is None:
        if len(_CODE_CACHE) > 4096:
            _CODE_CACHE.clear()
        code = _CODE_CACHE[key] = compile(source, filename, "exec")
    return code


def run_judge(
    channel: rpc.Channel, setup: str, tests: list[str], entry_point: str, stop_on_failure: bool
) -> dict:
    """Run trusted test snippets against the program on the other end of `channel`."""
    ns: dict = {"__name__": rpc.JUDGE_MODULE}
    ns["__builtins__"] = _TestScope(ns, channel)
    try:
        exec(_compiled(setup, "setup.py"), ns)  # trusted: the benchmark's own helper code
    except rpc.PeerGone as e:
        return {"tests": [[False, f"program stopped answering: {e}"] for _ in tests], "completed": True}
    except Exception as e:  # one outcome per test still (there had been none), and the message says why
        error = f"the setup raised {type(e).__name__}: {rpc._short(e)}"
        return {"tests": [[False, f"not run: {error}"] for _ in tests], "completed": True, "error": error}
    ns[entry_point] = ns["candidate"] = _NamedRemote(channel, entry_point)
    outcomes: list[list] = []
    for i, snippet in enumerate(tests):
        try:
            exec(_compiled(snippet, f"test_{i}.py"), ns)  # trusted test code
            outcomes.append([True, ""])
        except rpc.PeerGone as e:
            outcomes.append([False, f"program stopped answering: {e}"])
            outcomes.extend([False, "not run: the program stopped answering"] for _ in tests[i + 1 :])
            break
        except BaseException as e:
            outcomes.append([False, f"{type(e).__name__}: {rpc._short(e)}"])
            if stop_on_failure:  # one outcome per test still: a share of those run overstated the score
                outcomes.extend([False, "not run: an earlier test failed"] for _ in tests[i + 1 :])
                break
    return {"tests": outcomes, "completed": True}


class _TestScope(dict):
    """The builtins of test code: Python's, then, for a name the tests use but never define (a class the
    solution defines, such as a tree node the setup code builds), the program's object of that name, as
    a handle. As the builtins mapping (not a locals mapping of top-level code), it serves the names used
    in functions and class bodies the tests define too: a `def check():` or `class T:` using the
    solution's `Stack` raised NameError, and a correct solution failed."""

    def __init__(self, ns: dict, channel: rpc.Channel) -> None:
        super().__init__(vars(builtins))
        self.ns, self.channel = ns, channel
        self.program_names: set[str] = set()  # names found to be the program's own (not standard) objects

    def __missing__(self, name: str) -> object:
        try:
            found = self.channel.request("exists", ["name", name])
        except NameError:
            raise KeyError(name) from None
        if (found if isinstance(found, type) else type(found)) in self.channel.enums.parts:
            self.ns[name] = found  # the program's Enum class or member, as the judge made it of its parts
            return found
        if type(found) is list and len(found) == 2:  # an exception class: the one its errors arrive as
            kind = rpc.crossing.program_exception_class(*found)
            if kind is not None and not _catches_assertion(kind):
                self.ns[name] = kind
                return kind
        if name not in self.program_names:
            standard = self._standard(name)
            if standard is not None and not _catches_assertion(standard):
                self.ns[name] = standard
                return standard
            self.program_names.add(name)
        return _NamedRemote(self.channel, name)

    def _standard(self, name: str) -> object | None:
        """The judge's own standard-library object for a name the program bound to one (tests that use
        `math.isclose` relying on the solution's `import math`), or None: the program's object would be
        its to patch (`math.isclose = lambda *a: True`). A module is imported by the name the test wrote
        (numpy and its public submodules by the name the program reports, `_numpy`); an object of numpy
        by the judge's own numpy (`_numpy_object`); anything else by the `__module__` and
        `__qualname__` the program reports, among modules the judge has loaded already and those whose
        values cross by value (`Fraction`, `Decimal`: a test relying on the solution's `from fractions
        import Fraction` builds its expected values with the judge's own).
        A lie can only get the test a genuine object of a module of pure computation (`PURE_MODULES`; a
        class of `builtins`), reached through public names of classes, or numpy's object of the very name
        the test wrote, of computation only (`NUMPY_NAMESPACES`, `NUMPY_UNSAFE`): never os.abort,
        time.sleep, sys.exit or numpy.save, which a test's `Solution()` or `save()` would run in the judge."""
        top = sys.stdlib_module_names
        if name in top:
            try:
                return importlib.import_module(name)
            except Exception:
                return None
        try:
            module = self.channel.request("getattr", ["name", name], "__module__")
        except AttributeError:  # a module has none: numpy, as the program imported it (`np`)
            return self._numpy(name)
        except Exception:
            return None
        try:
            qualname = self.channel.request("getattr", ["name", name], "__qualname__")
        except Exception:
            return None
        if type(module) is not str or type(qualname) is not str:
            return None
        if module.partition(".")[0] == "numpy":
            return _numpy_object(module, qualname) if qualname == name else None
        parts = qualname.split(".")
        if module.partition(".")[0] not in PURE_MODULES or any(part.startswith("_") for part in parts):
            return None
        obj = sys.modules.get(module)
        if obj is None and module in rpc.crossing.VALUE_MODULES:
            obj = rpc.crossing.value_module(module)
        for i, part in enumerate(parts):
            if i and not isinstance(obj, type):  # the module's names, then its classes' only
                return None
            obj = getattr(obj, part, None)
        if isinstance(obj, types.ModuleType) or (module == "builtins" and not isinstance(obj, type)):
            return None  # builtins' functions (exec, open, breakpoint) are no test's to get this way
        return obj

    def _numpy(self, name: str) -> object | None:
        """The judge's own numpy, or public numpy submodule, for the program's module of that name
        (`np.array_equal(f(x), expected)` relying on the solution's `import numpy as np`,
        `npt.assert_allclose` on its `import numpy.testing as npt`: the program's module would be its to
        patch). A lie gets the test a genuine numpy module, which it uses with its own arguments only."""
        try:
            real = self.channel.request("getattr", ["name", name], "__name__")
        except Exception:
            return None
        if type(real) is not str or real.partition(".")[0] != "numpy":
            return None
        module = _numpy_public(real)
        return module if isinstance(module, types.ModuleType) and module.__name__ == real else None


def _numpy_public(dotted: str) -> object | None:
    """The judge's own numpy module for a dotted name `numpy[.sub...]`, reached by its public attributes
    (numpy imports its public submodules on first use) and never by importing a name the program gave: a
    lie could name `numpy.f2py.__main__`, whose import runs f2py. None unless every step is a module."""
    if dotted not in NUMPY_NAMESPACES:
        return None
    obj = rpc.crossing.numpy_module()
    for part in dotted.split(".")[1:]:
        if not isinstance(obj, types.ModuleType) or not part.isidentifier() or part.startswith("_"):
            return None
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, types.ModuleType) else None


def _numpy_object(module: str, qualname: str) -> object | None:
    """The judge's own numpy object for a name the program bound to numpy's `module`.`qualname` (`from numpy
    import array_equal`, `from numpy.testing import assert_allclose`: the program's function would be its
    to patch), or None. The caller asks that the test's name be the object's own, so a lie gets the test
    only the genuine numpy object of the name the test wrote (never `save` for its `Solution`). It is found
    in the public namespace above `module` (assert_allclose's is numpy.testing._private.utils: found in
    numpy.testing) and must be the object of that module and qualified name."""
    public = module.split(".")
    for i, part in enumerate(public):
        if part.startswith("_"):
            public = public[:i]
            break
    namespace = _numpy_public(".".join(public))
    if namespace is None or not qualname.isidentifier() or qualname.startswith("_"):
        return None
    if qualname in NUMPY_UNSAFE or (public[1:] == ["testing"] and not qualname.startswith("assert")):
        return None
    obj = getattr(namespace, qualname, None)
    if isinstance(obj, types.ModuleType) or getattr(obj, "__module__", None) != module:
        return None
    return obj if getattr(obj, "__qualname__", None) == qualname else None


def _catches_assertion(kinds: object) -> bool:
    """Whether `except kinds` catches a failed assert: a name the program binds to AssertionError or one
    of its bases must not make a test's `try: f(-1); assert False` `except Invalid: pass` pass."""
    if type(kinds) is tuple:  # the interpreter's except looks into nested tuples too
        return any(_catches_assertion(kind) for kind in kinds)
    return isinstance(kinds, type) and issubclass(kinds, BaseException) and issubclass(AssertionError, kinds)


class _NamedRemote(rpc.Remote):
    """The program's entry point, looked up by name in its namespace at each use."""

    __slots__ = ("_name",)

    def __init__(self, channel: rpc.Channel, name: str) -> None:
        super().__init__(channel, 0, "c")
        object.__setattr__(self, "_name", name)

    def _ref(self) -> object:
        return ["name", self._name]

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)
