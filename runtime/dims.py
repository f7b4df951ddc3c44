"""Symbolic dimensions: an int, a symbol (`"batch"`), or an expression of them (`"batch*4"`).

A dim is stored as a plain `int` or a *canonical* `str`, so shapes stay hashable tuples that
compare with `==`, print as they are and serialize without a codec. Canonical means: the
expression is normalized to a polynomial with integer coefficients over symbols (floor division
and modulo that do not simplify become opaque parenthesized atoms), so `4*batch` and `batch*4`
are the same string. Expressions that reduce to a constant become an `int`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

Dim = int | str

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|[-+*%()]))")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Poly: {monomial: coefficient}; a monomial is a sorted tuple of atoms (with repetition).
Poly = dict


class DimError(ValueError):
    """A dim expression could not be parsed or evaluated."""


def is_symbol(d: Dim) -> bool:
    """True for a bare symbol such as `"batch"`.

    >>> is_symbol("batch"), is_symbol("batch*4"), is_symbol(3)
    (True, False, False)
    """
    return isinstance(d, str) and _SYMBOL.match(d) is not None


def _const(c: int) -> Poly:
    return {(): c} if c else {}


def _add(p: Poly, q: Poly, sign: int = 1) -> Poly:
    out = dict(p)
    for m, c in q.items():
        v = out.get(m, 0) + sign * c
        if v:
            out[m] = v
        else:
            out.pop(m, None)
    return out


def _mul(p: Poly, q: Poly) -> Poly:
    out: Poly = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            m = tuple(sorted(m1 + m2))
            v = out.get(m, 0) + c1 * c2
            if v:
                out[m] = v
            else:
                out.pop(m, None)
    return out


def _as_int(p: Poly) -> int | None:
    if not p:
        return 0
    if len(p) == 1 and () in p:
        return p[()]
    return None


def _divmod_poly(p: Poly, q: Poly, op: str) -> Poly:
    a, b = _as_int(p), _as_int(q)
    if b == 0:
        raise DimError("division by zero in a dim expression")
    if a is not None and b is not None:
        return _const(a // b if op == "//" else a % b)
    if len(q) == 1:
        # a single-monomial divisor that divides every term exactly:
        # (batch*4)//2 == batch*2, (batch*seq*4)//seq == batch*4, (batch*4)%2 == 0
        (mq, cq), = q.items()
        quotient = {}
        for m, c in p.items():
            rest = list(m)
            for atom in mq:
                if atom not in rest:
                    break
                rest.remove(atom)
            else:
                if c % cq == 0:
                    quotient[tuple(rest)] = c // cq
                    continue
            break
        else:
            return quotient if op == "//" else {}
    num, den = _to_str(p), _to_str(q)
    if len(p) > 1 or num.startswith("-"):
        num = f"({num})"
    if not (_SYMBOL.match(den) or den.isdigit()):
        den = f"({den})"
    atom = f"({num}{op}{den})"
    return {(atom,): 1}


def _mono_key(m: tuple) -> tuple:
    return (-len(m), m)


def _to_str(p: Poly) -> str:
    if not p:
        return "0"
    parts: list[str] = []
    for m in sorted(p, key=_mono_key):
        c = p[m]
        if m:
            body = "*".join(m) + ("" if abs(c) == 1 else f"*{abs(c)}")
        else:
            body = str(abs(c))
        if parts:
            parts.append(("-" if c < 0 else "+") + body)
        else:
            parts.append(("-" if c < 0 else "") + body)
    return "".join(parts)


def _from_poly(p: Poly) -> Dim:
    v = _as_int(p)
    return v if v is not None else _to_str(p)


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    toks: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise DimError(f"bad dim expression {text!r} at column {pos}")
        pos = m.end()
        if m.group(1):
            toks.append(("int", m.group(1)))
        elif m.group(2):
            toks.append(("name", m.group(2)))
        else:
            toks.append(("op", m.group(3)))
    i = 0

    def peek() -> tuple[str, str] | None:
        return toks[i] if i < len(toks) else None

    def expr() -> Poly:
        nonlocal i
        p = term()
        while (t := peek()) and t[1] in "+-" and t[0] == "op":
            i += 1
            p = _add(p, term(), 1 if t[1] == "+" else -1)
        return p

    def term() -> Poly:
        nonlocal i
        p = factor()
        while (t := peek()) and t[0] == "op" and t[1] in ("*", "//", "%"):
            i += 1
            q = factor()
            p = _mul(p, q) if t[1] == "*" else _divmod_poly(p, q, t[1])
        return p

    def factor() -> Poly:
        nonlocal i
        t = peek()
        if t is None:
            raise DimError(f"bad dim expression {text!r}: unexpected end")
        i += 1
        if t[0] == "int":
            return _const(int(t[1]))
        if t[0] == "name":
            return {(t[1],): 1}
        if t[1] == "-":
            return _mul(_const(-1), factor())
        if t[1] == "(":
            p = expr()
            if peek() != ("op", ")"):
                raise DimError(f"bad dim expression {text!r}: missing ')'")
            i += 1
            return p
        raise DimError(f"bad dim expression {text!r}: unexpected {t[1]!r}")

    p = expr()
    if i != len(toks):
        raise DimError(f"bad dim expression {text!r}: trailing {toks[i][1]!r}")
    return tuple(sorted(p.items()))


def _poly(d: Dim) -> Poly:
    if isinstance(d, bool):
        raise DimError(f"a dim must be an int or a str, got {d!r}")
    if isinstance(d, int):
        return _const(d)
    if isinstance(d, str):
        return dict(_parse(d))
    raise DimError(f"a dim must be an int or a str, got {type(d).__name__} {d!r}")


def parse_dim(d: Dim) -> Dim:
    """Canonical form of a dim given as an int or an expression string.

    >>> parse_dim("4*batch"), parse_dim("2+3"), parse_dim("seq + 1")
    ('batch*4', 5, 'seq+1')
    """
    return _from_poly(_poly(d))


def add(a: Dim, b: Dim) -> Dim:
    """`a + b` of two dims.

    >>> add("seq", 1)
    'seq+1'
    """
    return _from_poly(_add(_poly(a), _poly(b)))


def sub(a: Dim, b: Dim) -> Dim:
    """`a - b` of two dims.

    >>> sub("seq+1", 1)
    'seq'
    """
    return _from_poly(_add(_poly(a), _poly(b), -1))


def mul(a: Dim, b: Dim) -> Dim:
    """`a * b` of two dims.

    >>> mul("batch", 4), mul(2, 3)
    ('batch*4', 6)
    """
    return _from_poly(_mul(_poly(a), _poly(b)))


def floordiv(a: Dim, b: Dim) -> Dim:
    """`a // b` of two dims; exact divisions simplify.

    >>> floordiv("batch*4", 2), floordiv("batch", 2)
    ('batch*2', '(batch//2)')
    """
    return _from_poly(_divmod_poly(_poly(a), _poly(b), "//"))


def mod(a: Dim, b: Dim) -> Dim:
    """`a % b` of two dims.

    >>> mod("batch*4", 2)
    0
    """
    return _from_poly(_divmod_poly(_poly(a), _poly(b), "%"))


def product(dims) -> Dim:
    """Product of several dims (1 for none).

    >>> product(["batch", 3, 4])
    'batch*12'
    """
    p = _const(1)
    for d in dims:
        p = _mul(p, _poly(d))
    return _from_poly(p)


def symbols(d: Dim) -> set[str]:
    """The symbol names a dim mentions.

    >>> sorted(symbols("(batch//2)*seq"))
    ['batch', 'seq']
    """
    if isinstance(d, int):
        return set()
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", d))


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    """The value of a dim once its symbols are bound.

    >>> evaluate("batch*4+1", {"batch": 3})
    13
    """
    if isinstance(d, int):
        return d
    return _eval_poly(_parse(d), env)


def _eval_poly(items: tuple, env: Mapping[str, int]) -> int:
    total = 0
    for mono, coef in items:
        v = coef
        for atom in mono:
            v *= _eval_atom(atom, env)
        total += v
    return total


def _eval_atom(atom: str, env: Mapping[str, int]) -> int:
    if atom[0] != "(":
        try:
            return env[atom]
        except KeyError:
            raise DimError(f"symbol {atom!r} is not bound") from None
    # "(num//den)" or "(num%den)": split at the top-level operator
    inner, depth = atom[1:-1], 0
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in "/%":
            op_len = 2 if inner.startswith("//", i) else 1
            num = evaluate(parse_dim(inner[:i]), env)
            den = evaluate(parse_dim(inner[i + op_len:]), env)
            if den == 0:
                raise DimError(f"division by zero evaluating {atom}")
            return num // den if op_len == 2 else num % den
    raise DimError(f"malformed dim atom {atom!r}")


def format_dim(d: Dim) -> str:
    """Text of a dim as it appears in a type.

    >>> format_dim("batch*4"), format_dim(3)
    ('batch*4', '3')
    """
    return str(d)
