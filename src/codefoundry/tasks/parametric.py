"""Parametric generator of very easy Python problems, for RL experiments with tiny models.

A *family* is a one-line task template such as "add a constant" or "reverse a string". Each draw
fills in random constants, a function name and a parameter name, and gives a HumanEval-style prompt
(signature plus a one-line docstring), a one-line canonical body, and 3-5 `assert` snippets whose
expected values are computed here by a reference implementation. A model of a few million parameters
trained for minutes on a CPU can learn these, which is the point: they make RL-with-verifiable-reward
loops testable on a laptop.

Limits: the problems are deliberately trivial and formulaic; they measure nothing about real coding
ability. Families without a constant (max_of_list, reverse_string, ...) vary only by name, so they
have few distinct prompts; `generate` drops a family from its rotation once it runs out of new
prompts. `split` guarantees that no prompt appears in both parts, but a held-out problem may share
its family and constant with a training problem under another function or parameter name.

Everything is deterministic given the seed (`random.Random(seed)`); nothing here executes code.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FAMILIES", "ParametricProblem", "generate", "split"]


@dataclass(frozen=True)
class ParametricProblem:
    task_id: str
    family: str
    prompt: str
    entry_point: str
    canonical_solution: str
    tests: tuple[str, ...]


@dataclass(frozen=True)
class _Draft:
    """One drawn problem before it gets an id: name, signature pieces, body and reference."""

    name: str
    params: str  # e.g. "x: int"
    returns: str  # e.g. "int"
    doc: str  # one line
    body: str  # the returned expression
    reference: Callable[..., Any]
    inputs: tuple[tuple[Any, ...], ...]

    def prompt(self) -> str:
        return f'def {self.name}({self.params}) -> {self.returns}:\n    """{self.doc}"""\n'

    def solution(self) -> str:
        return f"    return {self.body}\n"

    def tests(self) -> tuple[str, ...]:
        out = []
        for args in self.inputs:
            call = f"{self.name}({', '.join(repr(a) for a in args)})"
            expected = self.reference(*args)
            op = "is" if expected is None or isinstance(expected, bool) else "=="
            out.append(f"assert {call} {op} {expected!r}")
        return tuple(dict.fromkeys(out))  # drop duplicate snippets, keep order


# ------------------------------------------------------------------------------------ random inputs

_INT_PARAMS = ("x", "n", "value", "num")
_LIST_PARAMS = ("xs", "nums", "values", "items")
_STR_PARAMS = ("s", "text", "word")


def _ints(rng: random.Random, k: int = 3) -> tuple[tuple[int], ...]:
    """Inputs for one-int functions: 0, a negative, and some positives."""
    values = [0, rng.randint(-50, -1)] + [rng.randint(1, 100) for _ in range(k - 2)]
    return tuple((v,) for v in values)


def _int_list(rng: random.Random, *, min_len: int = 0, pool: Sequence[int] = ()) -> list[int]:
    length = rng.randint(min_len, 6)
    return [rng.choice(pool) if pool and rng.random() < 0.4 else rng.randint(-9, 20) for _ in range(length)]


def _lists(
    rng: random.Random, *, allow_empty: bool, pool: Sequence[int] = ()
) -> tuple[tuple[list[int]], ...]:
    cases = [[]] if allow_empty else [[rng.randint(-9, -1)]]
    cases += [_int_list(rng, min_len=1, pool=pool) for _ in range(3)]
    return tuple((c,) for c in cases)


def _word(rng: random.Random, lo: int = 1, hi: int = 6) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


def _strings(rng: random.Random, *, mixed_case: bool = False) -> tuple[tuple[str], ...]:
    words = ["", _word(rng, 1, 1), _word(rng), _word(rng, 3, 8)]
    if mixed_case:
        words = ["", words[1].upper(), words[2].capitalize(), words[3], _word(rng).upper() + "!1"]
    return tuple((w,) for w in words)


def _signed(k: int) -> str:
    """A constant as text for an expression: '+ 3' or '- 3'."""
    return f"+ {k}" if k >= 0 else f"- {-k}"


# ------------------------------------------------------------------------------------ families


def _add_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(1, 99), rng.choice(_INT_PARAMS)
    name = rng.choice((f"add_{k}", f"plus_{k}", f"increment_by_{k}"))
    return _Draft(
        name, f"{p}: int", "int", f"Return {p} plus {k}.", f"{p} + {k}", lambda x: x + k, _ints(rng, 4)
    )


def _sub_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(1, 99), rng.choice(_INT_PARAMS)
    name = rng.choice((f"sub_{k}", f"minus_{k}", f"decrement_by_{k}"))
    return _Draft(
        name, f"{p}: int", "int", f"Return {p} minus {k}.", f"{p} - {k}", lambda x: x - k, _ints(rng, 4)
    )


def _mul_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(2, 20), rng.choice(_INT_PARAMS)
    name = rng.choice((f"mul_{k}", f"times_{k}", f"multiply_by_{k}"))
    return _Draft(
        name,
        f"{p}: int",
        "int",
        f"Return {p} multiplied by {k}.",
        f"{p} * {k}",
        lambda x: x * k,
        _ints(rng, 4),
    )


def _affine(rng: random.Random) -> _Draft:
    a, b, p = rng.randint(2, 9), rng.choice([i for i in range(-9, 10) if i]), rng.choice(_INT_PARAMS)
    name = f"affine_{a}_{'plus' if b > 0 else 'minus'}_{abs(b)}"
    expr = f"{a} * {p} {_signed(b)}"
    return _Draft(name, f"{p}: int", "int", f"Return {expr}.", expr, lambda x: a * x + b, _ints(rng, 4))


def _mod_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(2, 20), rng.choice(_INT_PARAMS)
    name = rng.choice((f"mod_{k}", f"remainder_{k}"))
    doc = f"Return the remainder of {p} divided by {k}, as Python's % operator gives it."
    return _Draft(name, f"{p}: int", "int", doc, f"{p} % {k}", lambda x: x % k, _ints(rng, 4))


def _is_multiple_of_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(2, 12), rng.choice(_INT_PARAMS)
    name = rng.choice((f"is_multiple_of_{k}", f"divisible_by_{k}"))
    inputs = ((0,), (k * rng.randint(1, 9),), (k * rng.randint(1, 9) + rng.randint(1, k - 1),), (-k,))
    return _Draft(
        name,
        f"{p}: int",
        "bool",
        f"Return True if {p} is divisible by {k}, else False.",
        f"{p} % {k} == 0",
        lambda x: x % k == 0,
        inputs,
    )


def _abs_diff_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(1, 50), rng.choice(_INT_PARAMS)
    name = rng.choice((f"distance_to_{k}", f"abs_diff_{k}"))
    doc = f"Return the absolute difference between {p} and {k}."
    inputs = ((0,), (k,), (k + rng.randint(1, 30),), (rng.randint(-30, -1),))
    return _Draft(name, f"{p}: int", "int", doc, f"abs({p} - {k})", lambda x: abs(x - k), inputs)


def _max_of_list(rng: random.Random) -> _Draft:
    p = rng.choice(_LIST_PARAMS)
    name = rng.choice(("max_of_list", "largest", "biggest_value"))
    doc = f"Return the largest element of the non-empty list {p}."
    return _Draft(name, f"{p}: list[int]", "int", doc, f"max({p})", max, _lists(rng, allow_empty=False))


def _min_of_list(rng: random.Random) -> _Draft:
    p = rng.choice(_LIST_PARAMS)
    name = rng.choice(("min_of_list", "smallest", "lowest_value"))
    doc = f"Return the smallest element of the non-empty list {p}."
    return _Draft(name, f"{p}: list[int]", "int", doc, f"min({p})", min, _lists(rng, allow_empty=False))


def _sum_of_list(rng: random.Random) -> _Draft:
    p = rng.choice(_LIST_PARAMS)
    name = rng.choice(("sum_of_list", "total", "add_all"))
    doc = f"Return the sum of the elements of {p} (0 for an empty list)."
    return _Draft(name, f"{p}: list[int]", "int", doc, f"sum({p})", sum, _lists(rng, allow_empty=True))


def _count_value(rng: random.Random) -> _Draft:
    k, p = rng.randint(0, 9), rng.choice(_LIST_PARAMS)
    name = rng.choice((f"count_{k}", f"count_value_{k}"))
    doc = f"Return how many elements of {p} are equal to {k}."
    inputs = _lists(rng, allow_empty=True, pool=(k,))
    return _Draft(name, f"{p}: list[int]", "int", doc, f"{p}.count({k})", lambda xs: xs.count(k), inputs)


def _map_add_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(1, 20), rng.choice(_LIST_PARAMS)
    name = rng.choice((f"add_{k}_to_each", f"shift_all_by_{k}"))
    doc = f"Return a new list with {k} added to every element of {p}."
    return _Draft(
        name,
        f"{p}: list[int]",
        "list[int]",
        doc,
        f"[v + {k} for v in {p}]",
        lambda xs: [v + k for v in xs],
        _lists(rng, allow_empty=True),
    )


def _filter_greater_than_k(rng: random.Random) -> _Draft:
    k, p = rng.randint(0, 15), rng.choice(_LIST_PARAMS)
    name = rng.choice((f"greater_than_{k}", f"keep_above_{k}"))
    doc = f"Return the elements of {p} that are greater than {k}, in their original order."
    return _Draft(
        name,
        f"{p}: list[int]",
        "list[int]",
        doc,
        f"[v for v in {p} if v > {k}]",
        lambda xs: [v for v in xs if v > k],
        _lists(rng, allow_empty=True, pool=(k, k + 1)),
    )


def _first_element(rng: random.Random) -> _Draft:
    p = rng.choice(_LIST_PARAMS)
    name = rng.choice(("first_element", "head", "first_item"))
    doc = f"Return the first element of {p}, or None if {p} is empty."
    return _Draft(
        name,
        f"{p}: list[int]",
        "int | None",
        doc,
        f"{p}[0] if {p} else None",
        lambda xs: xs[0] if xs else None,
        _lists(rng, allow_empty=True),
    )


def _last_element(rng: random.Random) -> _Draft:
    p = rng.choice(_LIST_PARAMS)
    name = rng.choice(("last_element", "tail_item", "last_item"))
    doc = f"Return the last element of {p}, or None if {p} is empty."
    return _Draft(
        name,
        f"{p}: list[int]",
        "int | None",
        doc,
        f"{p}[-1] if {p} else None",
        lambda xs: xs[-1] if xs else None,
        _lists(rng, allow_empty=True),
    )


def _repeat_string(rng: random.Random) -> _Draft:
    k, p = rng.randint(2, 5), rng.choice(_STR_PARAMS)
    name = rng.choice((f"repeat_{k}", f"repeat_{k}_times"))
    doc = f"Return {p} repeated {k} times."
    return _Draft(name, f"{p}: str", "str", doc, f"{p} * {k}", lambda s: s * k, _strings(rng))


def _add_prefix(rng: random.Random) -> _Draft:
    w, p = _word(rng, 1, 4), rng.choice(_STR_PARAMS)
    doc = f"Return {p} with '{w}' added at the start."
    return _Draft(f"add_prefix_{w}", f"{p}: str", "str", doc, f"{w!r} + {p}", lambda s: w + s, _strings(rng))


def _add_suffix(rng: random.Random) -> _Draft:
    w, p = _word(rng, 1, 4), rng.choice(_STR_PARAMS)
    doc = f"Return {p} with '{w}' added at the end."
    return _Draft(f"add_suffix_{w}", f"{p}: str", "str", doc, f"{p} + {w!r}", lambda s: s + w, _strings(rng))


def _reverse_string(rng: random.Random) -> _Draft:
    p = rng.choice(_STR_PARAMS)
    name = rng.choice(("reverse_string", "reversed_text", "backwards"))
    return _Draft(
        name, f"{p}: str", "str", f"Return {p} reversed.", f"{p}[::-1]", lambda s: s[::-1], _strings(rng)
    )


def _upper_string(rng: random.Random) -> _Draft:
    p = rng.choice(_STR_PARAMS)
    name = rng.choice(("to_upper", "shout", "upper_case"))
    return _Draft(
        name,
        f"{p}: str",
        "str",
        f"Return {p} converted to upper case.",
        f"{p}.upper()",
        str.upper,
        _strings(rng, mixed_case=True),
    )


def _lower_string(rng: random.Random) -> _Draft:
    p = rng.choice(_STR_PARAMS)
    name = rng.choice(("to_lower", "whisper", "lower_case"))
    return _Draft(
        name,
        f"{p}: str",
        "str",
        f"Return {p} converted to lower case.",
        f"{p}.lower()",
        str.lower,
        _strings(rng, mixed_case=True),
    )


def _count_char(rng: random.Random) -> _Draft:
    c, p = rng.choice(string.ascii_lowercase), rng.choice(_STR_PARAMS)
    name = rng.choice((f"count_{c}", f"count_letter_{c}"))
    doc = f"Return how many times the character '{c}' occurs in {p}."
    inputs = ("",), (c,), (c + _word(rng) + c,), (_word(rng, 3, 8),)
    return _Draft(name, f"{p}: str", "int", doc, f"{p}.count({c!r})", lambda s: s.count(c), inputs)


_FAMILY_BUILDERS: dict[str, Callable[[random.Random], _Draft]] = {
    "add_k": _add_k,
    "sub_k": _sub_k,
    "mul_k": _mul_k,
    "affine": _affine,
    "mod_k": _mod_k,
    "is_multiple_of_k": _is_multiple_of_k,
    "abs_diff_k": _abs_diff_k,
    "max_of_list": _max_of_list,
    "min_of_list": _min_of_list,
    "sum_of_list": _sum_of_list,
    "count_value": _count_value,
    "map_add_k": _map_add_k,
    "filter_greater_than_k": _filter_greater_than_k,
    "first_element": _first_element,
    "last_element": _last_element,
    "repeat_string": _repeat_string,
    "add_prefix": _add_prefix,
    "add_suffix": _add_suffix,
    "reverse_string": _reverse_string,
    "upper_string": _upper_string,
    "lower_string": _lower_string,
    "count_char": _count_char,
}

FAMILIES: tuple[str, ...] = tuple(_FAMILY_BUILDERS)

_MAX_MISSES = 64  # consecutive duplicate draws after which a family counts as exhausted


# ------------------------------------------------------------------------------------ public API


def generate(n: int, *, seed: int, families: Sequence[str] | None = None) -> list[ParametricProblem]:
    """Draw n problems with pairwise distinct prompts, cycling through `families` (default: all) in
    order so that each family gets an equal share while it still has new prompts to give.

    Raises ValueError for an unknown family or when the families cannot supply n distinct prompts."""
    names = list(FAMILIES if families is None else families)
    unknown = [f for f in names if f not in _FAMILY_BUILDERS]
    if unknown:
        raise ValueError(f"unknown families: {unknown}; known: {list(FAMILIES)}")
    if n < 0:
        raise ValueError("n must be non-negative")
    rng = random.Random(seed)
    active = list(dict.fromkeys(names))
    seen: set[str] = set()
    out: list[ParametricProblem] = []
    turn = 0
    while len(out) < n:
        if not active:
            raise ValueError(f"only {len(out)} distinct problems available from {names}")
        family = active[turn % len(active)]
        draft = _draw_new(_FAMILY_BUILDERS[family], rng, seen)
        if draft is None:
            active.remove(family)
            continue
        seen.add(draft.prompt())
        out.append(_finish(draft, family, len(out)))
        turn += 1
    return out


def split(seed: int, n_train: int, n_test: int) -> tuple[list[ParametricProblem], list[ParametricProblem]]:
    """A train and a test list drawn from one `generate` call, so no prompt is in both."""
    problems = generate(n_train + n_test, seed=seed)
    order = list(range(len(problems)))
    random.Random(f"split:{seed}").shuffle(order)
    train_idx = sorted(order[:n_train])
    test_idx = sorted(order[n_train:])
    return [problems[i] for i in train_idx], [problems[i] for i in test_idx]


def _draw_new(build: Callable[[random.Random], _Draft], rng: random.Random, seen: set[str]) -> _Draft | None:
    for _ in range(_MAX_MISSES):
        draft = build(rng)
        if draft.prompt() not in seen and len(draft.tests()) >= 3:
            return draft
    return None


def _finish(draft: _Draft, family: str, index: int) -> ParametricProblem:
    return ParametricProblem(
        task_id=f"parametric/{family}/{index}",
        family=family,
        prompt=draft.prompt(),
        entry_point=draft.name,
        canonical_solution=draft.solution(),
        tests=draft.tests(),
    )
