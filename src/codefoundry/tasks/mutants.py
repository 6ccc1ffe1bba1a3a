"""Plausibly wrong variants of a correct program, made by one small AST edit each (mutation testing).

Used to check that a problem's tests reject wrong code and that our verdicts agree with a reference
grader on failing samples. The edits are the classic mutation operators: flip a comparison, swap an
arithmetic operator, nudge an integer constant, negate a condition, return early with None.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator

_COMPARE_FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}  # fmt: skip
_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv,
               ast.Div: ast.Mult, ast.Pow: ast.Mult}  # fmt: skip


def _sites(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _COMPARE_FLIP:
            yield "compare", i
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
            yield "binop", i
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            yield "constant", i
        elif isinstance(node, ast.If | ast.While):
            yield "negate", i
        elif isinstance(node, ast.Return) and node.value is not None:
            yield "return_none", i


def _apply(tree: ast.AST, kind: str, index: int) -> ast.AST:
    tree = copy.deepcopy(tree)
    node = list(ast.walk(tree))[index]
    if kind == "compare":
        node.ops[0] = _COMPARE_FLIP[type(node.ops[0])]()
    elif kind == "binop":
        node.op = _BINOP_SWAP[type(node.op)]()
    elif kind == "constant":
        node.value = node.value + 1
    elif kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif kind == "return_none":
        node.value = ast.Constant(value=None)
    return ast.fix_missing_locations(tree)


def mutants(source: str, *, function: str | None = None, limit: int = 5) -> list[str]:
    """Up to `limit` distinct single-edit variants of `source`, edits spread across the program. With
    `function`, only that function's body is edited (so helpers the tests share stay correct)."""
    tree = ast.parse(source)
    target: ast.AST = tree
    if function is not None:
        found = [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == function
        ]
        if not found:
            return []
        target = found[0]
    offset = list(ast.walk(tree)).index(target)
    sites = list(_sites(target))
    if not sites:
        return []
    step = max(1, len(sites) // limit)
    original = ast.unparse(tree)
    out: list[str] = []
    for kind, i in sites[::step]:
        text = ast.unparse(_apply(tree, kind, _global_index(tree, target, i, offset)))
        if text != original and text not in out:
            out.append(text + "\n")
        if len(out) >= limit:
            break
    return out


def _global_index(tree: ast.AST, target: ast.AST, local: int, offset: int) -> int:
    node = list(ast.walk(target))[local]
    return next(i for i, n in enumerate(ast.walk(tree)) if n is node)
