"""The AST rewrite behind `tracer.script`: control flow becomes calls that decide at run time.

Why a source rewrite: Python gives a traced value no say over `if`, `while`, `for`, `and`,
`or` and `not`; only rewriting them into calls lets a traced condition record an `if`/`loop` op
(TensorFlow AutoGraph's approach; TorchScript compiles the same subset). The rewrite has two
passes over the function body:

1. jumps: `break`, `continue` and non-tail `return` become flag assignments; the statements
   after one run under `if not flag:`; loops also stop on the flags.
2. control flow: each `if`/`while`/`for` becomes nested functions (branches or body, plus
   get/set of the variables they assign, shared through `nonlocal`) and a call to
   `tracer.script_runtime`; `a and b`, `a or b`, `not a`, `x if c else y` become calls too.

Every local is bound to an `Undefined` marker at entry, so a variable assigned on only one
path is a value that raises a clear `TraceError` when used, not a `NameError` in our code.
Unsupported constructs raise `TraceError` with file:line at conversion time.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable

from .errors import TraceError

RT = "_cs_"  # name of the runtime helpers module inside the rewritten function
FN = "_cs_fn"  # prefix of generated function names (never loop state)
RET, RETVAL = "_cs_ret", "_cs_retval"

_UNSUPPORTED = {
    ast.Try: "try/except", ast.Global: "`global`", ast.Nonlocal: "`nonlocal` (a closure mutating state)",
    ast.Yield: "a generator (`yield`)", ast.YieldFrom: "a generator (`yield from`)", ast.Await: "`await`",
    ast.AsyncFor: "`async for`", ast.AsyncWith: "`async with`", ast.Delete: "`del`",
    ast.Match: "`match`",
}
if hasattr(ast, "TryStar"):
    _UNSUPPORTED[ast.TryStar] = "try/except*"


class _Ctx:
    """Where the function came from (for messages) and a counter for fresh names."""

    def __init__(self, filename: str):
        self.filename = filename
        self.count = 0

    def fresh(self) -> int:
        self.count += 1
        return self.count

    def loc(self, node: ast.AST) -> str:
        return f"{os.path.basename(self.filename)}:{getattr(node, 'lineno', '?')}"

    def error(self, node: ast.AST, msg: str) -> TraceError:
        return TraceError(f"{self.loc(node)}: {msg}")


# --- small AST builders ------------------------------------------------------------------------
def _name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def _rt(attr: str) -> ast.Attribute:
    return ast.Attribute(value=_name(RT), attr=attr, ctx=ast.Load())


def _call(attr: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_rt(attr), args=list(args), keywords=[])


def _assign(target: str, value: ast.expr) -> ast.Assign:
    return ast.Assign(targets=[_name(target, True)], value=value)


def _const(v) -> ast.Constant:
    return ast.Constant(value=v)


def _lambda(body: ast.expr) -> ast.Lambda:
    return ast.Lambda(args=_no_args(), body=body)


def _no_args(*names: str) -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n in names], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])


def _def(name: str, params: Iterable[str], body: list[ast.stmt], nonlocal_names: list[str]) -> ast.FunctionDef:
    stmts: list[ast.stmt] = [ast.Nonlocal(names=list(nonlocal_names))] if nonlocal_names else []
    stmts += body or [ast.Pass()]
    return ast.FunctionDef(name=name, args=_no_args(*params), body=stmts, decorator_list=[], returns=None,
                           type_comment=None)


def _located(nodes: list[ast.stmt], at: ast.AST) -> list[ast.stmt]:
    for n in nodes:
        for sub in ast.walk(n):
            if "lineno" in sub._attributes and getattr(sub, "lineno", None) is None:
                # the statement's first line only: a frame reports a call's end line otherwise
                sub.lineno, sub.col_offset = at.lineno, at.col_offset
                sub.end_lineno, sub.end_col_offset = at.lineno, at.col_offset
    return nodes


# --- scope analysis ----------------------------------------------------------------------------
def _walk_scope(nodes: Iterable[ast.AST]):
    """Every node of these statements that runs in the same function scope (not inside nested
    functions, lambdas, classes or comprehensions, whose names are their own)."""
    stack = list(nodes)[::-1]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack.extend(reversed(n.decorator_list))
            continue
        if isinstance(n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(n))))


def assigned_names(nodes: Iterable[ast.AST]) -> list[str]:
    """Names these statements bind in the current scope, in first-binding order."""
    out: dict[str, None] = {}
    for n in _walk_scope(nodes):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.setdefault(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.setdefault(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            for a in n.names:
                out.setdefault((a.asname or a.name).split(".")[0])
    return [k for k in out if not k.startswith(FN)]


def _mutated_bases(nodes: Iterable[ast.AST]) -> list[str]:
    """Names whose contents these statements change in place (`x[i] = v`, `x.a = v`, `x += v`)."""
    out: dict[str, None] = {}
    for n in _walk_scope(nodes):
        if isinstance(n, (ast.Subscript, ast.Attribute)) and isinstance(n.ctx, ast.Store):
            base = n.value
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name):
                out.setdefault(base.id)
    return list(out)


def _check_supported(fdef: ast.FunctionDef, cx: _Ctx) -> None:
    for n in _walk_scope(fdef.body):
        for kind, what in _UNSUPPORTED.items():
            if isinstance(n, kind):
                raise cx.error(n, f"{what} is not supported in a @tracer.script function")
        if isinstance(n, (ast.For, ast.While)) and n.orelse:
            raise cx.error(n, f"`{type(n).__name__.lower()} ... else` is not supported in a @tracer.script "
                              "function; use a flag variable")
        if isinstance(n, ast.Name) and n.id.startswith(RT):
            raise cx.error(n, f"names starting with {RT!r} are reserved by tracer.script, got {n.id!r}")
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # nested functions are not converted; they may read but not rebind our variables
            for m in ast.walk(n):
                if isinstance(m, (ast.Nonlocal, ast.Global)):
                    raise cx.error(m, "a nested function that rebinds outer variables (`nonlocal`/`global`) "
                                      "is not supported in a @tracer.script function")


# --- pass 1: jumps -----------------------------------------------------------------------------
def _always_returns(stmts: list[ast.stmt]) -> bool:
    for s in stmts:
        if isinstance(s, ast.Return):
            return True
        if isinstance(s, ast.If) and _always_returns(s.body) and _always_returns(s.orelse):
            return True
        if isinstance(s, ast.With) and _always_returns(s.body):
            return True
    return False


class _Jumps:
    """Pass 1: break/continue/return into flags (see the module docstring)."""

    def __init__(self, cx: _Ctx, rewrite_returns: bool):
        self.cx = cx
        self.rewrite_returns = rewrite_returns

    def block(self, stmts: list[ast.stmt], loop: tuple[str, str] | None) -> tuple[list[ast.stmt], set[str]]:
        out: list[ast.stmt] = []
        for i, s in enumerate(stmts):
            new, flags = self.stmt(s, loop)
            out.extend(new)
            if flags:
                rest, more = self.block(stmts[i + 1:], loop)
                if rest:
                    guard = ast.If(test=_call("not_any", *(_name(f) for f in sorted(flags))), body=rest, orelse=[])
                    out.extend(_located([guard], s))
                return out, flags | more
        return out, set()

    def stmt(self, s: ast.stmt, loop: tuple[str, str] | None) -> tuple[list[ast.stmt], set[str]]:
        if isinstance(s, (ast.Break, ast.Continue)):
            if loop is None:
                raise self.cx.error(s, f"`{type(s).__name__.lower()}` outside a loop")
            flag = loop[0] if isinstance(s, ast.Break) else loop[1]
            return _located([_assign(flag, _const(True))], s), {flag}
        if isinstance(s, ast.Return) and self.rewrite_returns:
            value = s.value if s.value is not None else _const(None)
            return _located([_assign(RETVAL, value), _assign(RET, _const(True))], s), {RET}
        if isinstance(s, ast.If):
            s.body, f1 = self.block(s.body, loop)
            s.orelse, f2 = self.block(s.orelse, loop)
            return [s], f1 | f2
        if isinstance(s, ast.With):
            s.body, f = self.block(s.body, loop)
            return [s], f
        if isinstance(s, (ast.For, ast.While)):
            k = self.cx.fresh()
            brk, cont = f"_cs_brk{k}", f"_cs_cont{k}"
            body, flags = self.block(s.body, (brk, cont))
            pre: list[ast.stmt] = []
            stop = [f for f in (brk, RET) if f in flags]
            if cont in flags:
                body.insert(0, _located([_assign(cont, _const(False))], s)[0])
            if brk in flags:
                pre.append(_assign(brk, _const(False)))
            s.body = body
            if stop:
                extra = _call("not_any", *(_name(f) for f in stop))
                if isinstance(s, ast.While):
                    s.test = ast.BoolOp(op=ast.And(), values=[extra, s.test])
                else:
                    s._cs_extra = extra  # read by pass 2
            return _located(pre, s) + [s], flags & {RET}
        return [s], set()


# --- pass 2: control flow ----------------------------------------------------------------------
class _Exprs(ast.NodeTransformer):
    """`and`/`or`/`not`/`x if c else y` into runtime calls (not inside nested defs/classes)."""

    def __init__(self, cx: _Ctx):
        self.cx = cx

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        fn = "and_" if isinstance(node.op, ast.And) else "or_"
        return ast.copy_location(_call(fn, *(_lambda(v) for v in node.values)), node)

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return ast.copy_location(_call("not_", node.operand), node)
        return node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        return ast.copy_location(_call("if_exp", node.test, _lambda(node.body), _lambda(node.orelse),
                                       _const(self.cx.loc(node))), node)


class _Control:
    """Pass 2: if/while/for into nested functions and runtime calls."""

    def __init__(self, cx: _Ctx, local_names: set[str]):
        self.cx = cx
        self.locals = local_names
        self.exprs = _Exprs(cx)

    def expr(self, e: ast.expr) -> ast.expr:
        return self.exprs.visit(e)

    def block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in stmts:
            out.extend(self.stmt(s))
        return out

    def _state(self, nodes: list[ast.AST], extra: Iterable[str] = ()) -> list[str]:
        names = dict.fromkeys(list(extra) + assigned_names(nodes))
        names.update(dict.fromkeys(n for n in _mutated_bases(nodes) if n in self.locals))
        return [n for n in names if n in self.locals]

    def _accessors(self, k: int, names: list[str]) -> list[ast.stmt]:
        tup = ast.Tuple(elts=[_name(n) for n in names], ctx=ast.Load())
        get = _def(f"{FN}_get{k}", [], [ast.Return(value=tup)], [])
        if names:
            target = ast.Tuple(elts=[_name(n, True) for n in names], ctx=ast.Store())
            body: list[ast.stmt] = [ast.Assign(targets=[target], value=_name("_cs_v"))]
        else:
            body = []
        set_ = _def(f"{FN}_set{k}", ["_cs_v"], body, names)
        return [get, set_]

    def _nonlocals(self, body: list[ast.stmt]) -> list[str]:
        return [n for n in assigned_names(body) if n in self.locals]

    def stmt(self, s: ast.stmt) -> list[ast.stmt]:
        if isinstance(s, ast.If):
            return self._if(s)
        if isinstance(s, ast.While):
            return self._while(s)
        if isinstance(s, ast.For):
            return self._for(s)
        if isinstance(s, ast.With):
            for item in s.items:
                item.context_expr = self.expr(item.context_expr)
            s.body = self.block(s.body)
            return [s]
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return [s]
        return [self.exprs.visit(s)]

    def _names_tuple(self, names: list[str]) -> ast.Tuple:
        return ast.Tuple(elts=[_const(n) for n in names], ctx=ast.Load())

    def _if(self, s: ast.If) -> list[ast.stmt]:
        k = self.cx.fresh()
        names = self._state(s.body + s.orelse)
        body, orelse = self.block(s.body), self.block(s.orelse)
        out = [_def(f"{FN}_then{k}", [], body, self._nonlocals(body)),
               _def(f"{FN}_else{k}", [], orelse, self._nonlocals(orelse)),
               *self._accessors(k, names),
               ast.Expr(value=_call("if_stmt", self.expr(s.test), _name(f"{FN}_then{k}"), _name(f"{FN}_else{k}"),
                                    _name(f"{FN}_get{k}"), _name(f"{FN}_set{k}"), self._names_tuple(names),
                                    _const(self.cx.loc(s))))]
        return _located(out, s)

    def _while(self, s: ast.While) -> list[ast.stmt]:
        k = self.cx.fresh()
        names = self._state(s.body)
        body = self.block(s.body)
        out = [_def(f"{FN}_cond{k}", [], [ast.Return(value=self.expr(s.test))], []),
               _def(f"{FN}_body{k}", [], body, self._nonlocals(body)),
               *self._accessors(k, names),
               ast.Expr(value=_call("while_stmt", _name(f"{FN}_cond{k}"), _name(f"{FN}_body{k}"),
                                    _name(f"{FN}_get{k}"), _name(f"{FN}_set{k}"), self._names_tuple(names),
                                    _const(self.cx.loc(s))))]
        return _located(out, s)

    def _for(self, s: ast.For) -> list[ast.stmt]:
        k = self.cx.fresh()
        names = self._state([s.target] + s.body)
        bind = ast.Assign(targets=[s.target], value=_name("_cs_item"))
        body = [ast.copy_location(bind, s)] + self.block(s.body)
        it = s.iter
        if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
                and not it.keywords and "range" not in self.locals):
            it = ast.copy_location(_call("range_", *it.args), it)
        extra = getattr(s, "_cs_extra", None)
        out: list[ast.stmt] = []
        if extra is not None:
            out.append(_def(f"{FN}_cond{k}", [], [ast.Return(value=extra)], []))
        out += [_def(f"{FN}_body{k}", ["_cs_item"], body, self._nonlocals(body)),
                *self._accessors(k, names),
                ast.Expr(value=_call("for_stmt", self.expr(it), _name(f"{FN}_cond{k}") if extra else _const(None),
                                     _name(f"{FN}_body{k}"), _name(f"{FN}_get{k}"), _name(f"{FN}_set{k}"),
                                     self._names_tuple(names), _const(self.cx.loc(s))))]
        return _located(out, s)


# --- the whole function ------------------------------------------------------------------------
def _params(fdef: ast.FunctionDef) -> list[str]:
    a = fdef.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return names


def rewrite_function(fdef: ast.FunctionDef, filename: str) -> ast.FunctionDef:
    """Rewrite one parsed function for tracer.script (in place; returns it).

    >>> f = ast.parse("def f(x):\\n    if x > 0:\\n        x = -x\\n    return x").body[0]
    >>> "if_stmt" in ast.unparse(rewrite_function(f, "m.py"))
    True
    """
    cx = _Ctx(filename)
    if isinstance(fdef, ast.AsyncFunctionDef):
        raise cx.error(fdef, "async functions cannot be scripted")
    _check_supported(fdef, cx)
    body = fdef.body
    returns = [n for n in _walk_scope(body) if isinstance(n, ast.Return)]
    tail = body[-1] if body and isinstance(body[-1], ast.Return) else None
    rewrite_returns = any(r is not tail for r in returns)
    always = _always_returns(body)
    body, _ = _Jumps(cx, rewrite_returns).block(body, None)
    if rewrite_returns:
        body = [_assign(RET, _const(False)), _assign(RETVAL, _call("Undefined", _const(RETVAL)))] + body
        body.append(ast.Return(value=_call("return_value", _name(RET), _name(RETVAL), _const(always),
                                           _const(cx.loc(fdef)))))
    params = _params(fdef)
    local_names = [n for n in assigned_names(body) if n not in params]
    converted = _Control(cx, set(local_names) | set(params)).block(body)
    init = [_assign(n, _call("Undefined", _const(n))) for n in local_names]
    fdef.body = _located(init, fdef) + converted
    fdef.decorator_list = []
    ast.fix_missing_locations(fdef)
    return fdef
