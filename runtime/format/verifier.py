"""A structural FlatBuffers verifier for `castml.fbs`, in the spirit of flatc's C++ `Verifier`.

The generated Python accessors trust the buffer: a corrupt offset makes them read garbage, raise
`struct.error`/`IndexError`, or loop over billions of elements. Running this first proves every
table, vtable, string and vector the loader will touch lies inside the table region, so the
accessors are safe afterwards. Work is bounded by the file size (a budget of visited items), so
files whose offsets alias one structure many times cannot make loading quadratic.
"""

from __future__ import annotations

import struct

from ..errors import ModelFormatError

# Field kinds: an int is an inline scalar of that many bytes; ("str",), ("table", T),
# ("vec", elem_size) for scalars, ("vec_str",), ("vec_table", T).
STR = ("str",)
VEC_STR = ("vec_str",)


def _t(name: str) -> tuple:
    return ("table", name)


def _vt(name: str) -> tuple:
    return ("vec_table", name)


def _v(size: int) -> tuple:
    return ("vec", size)


# Field lists in schema order (field i lives in vtable slot 4 + 2*i); must match castml.fbs.
SCHEMA: dict[str, list[tuple[str, object]]] = {
    "Model": [("format_version", 4), ("producer", STR), ("entries", _vt("Entry")), ("tensors", _vt("Tensor")),
              ("data_offset", 8), ("data_length", 8), ("data_hash", STR)],
    "Entry": [("name", STR), ("graph", _t("Graph"))],
    "Graph": [("values", _vt("Value")), ("regions", _vt("Region")), ("in_tree", STR), ("out_tree", STR),
              ("arg_names", VEC_STR), ("input_names", VEC_STR), ("output_names", VEC_STR),
              ("metadata", _vt("KeyValue"))],
    "Value": [("name", STR), ("dtype", 1), ("shape", _vt("Dim"))],
    "Dim": [("size", 8), ("expr", STR)],
    "Attr": [("name", STR), ("kind", 1), ("i", 8), ("f", 8), ("s", STR), ("dtype", 1), ("ints", _v(8)),
             ("floats", _v(8)), ("dims", _vt("Dim")), ("tensor", 4)],
    "Tensor": [("dtype", 1), ("shape", _v(8)), ("offset", 8), ("length", 8)],
    "Op": [("kind", STR), ("inputs", _v(4)), ("outputs", _v(4)), ("attrs", _vt("Attr")), ("regions", _v(4)),
           ("loc", STR)],
    "Region": [("inputs", _v(4)), ("ops", _vt("Op")), ("outputs", _v(4))],
    "KeyValue": [("key", STR), ("value", STR)],
}

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class _Checker:
    def __init__(self, buf, end: int):
        self.buf = buf
        self.end = end
        self.budget = end // 4 + 64

    def fail(self, where: str, pos: int, what: str) -> None:
        raise ModelFormatError(f"{where} (offset {pos}): {what}")

    def spend(self, n: int, where: str, pos: int) -> None:
        self.budget -= n
        if self.budget < 0:
            self.fail(where, pos, "the structure references more items than the file can hold "
                                  "(offsets alias one another)")

    def read(self, fmt: struct.Struct, pos: int, where: str) -> int:
        if pos < 0 or pos + fmt.size > self.end:
            self.fail(where, pos, f"reading {fmt.size} bytes past the table region ({self.end} bytes)")
        return fmt.unpack_from(self.buf, pos)[0]

    def follow(self, pos: int, where: str) -> int:
        """Target of the uoffset stored at `pos`."""
        target = pos + self.read(_U32, pos, where)
        if target >= self.end:
            self.fail(where, pos, f"offset points to {target}, past the table region ({self.end} bytes)")
        return target

    def vector(self, pos: int, elem: int, where: str) -> tuple[int, int]:
        """(start of elements, count) of the vector whose uoffset is at `pos`."""
        vec = self.follow(pos, where)
        if vec % 4:
            self.fail(where, vec, "vector is not 4-byte aligned")
        n = self.read(_U32, vec, where)
        if vec + 4 + n * elem > self.end:
            self.fail(where, vec, f"vector of {n} elements of {elem} bytes runs past the table region")
        self.spend(max(1, n * elem // 4), where, vec)  # bytes/4: a file without aliasing stays in budget
        return vec + 4, n

    def string(self, pos: int, where: str) -> None:
        start, n = self.vector(pos, 1, where)
        if start + n >= self.end or self.buf[start + n] != 0:
            self.fail(where, start, "string is not null-terminated")

    def table(self, pos: int, name: str, where: str, stack: list) -> None:
        self.spend(1, where, pos)
        if pos % 4:
            self.fail(where, pos, "table is not 4-byte aligned")
        vt = pos - self.read(_I32, pos, where)
        if vt < 0 or vt % 2:
            self.fail(where, pos, f"vtable offset {vt} is out of range or misaligned")
        vt_size = self.read(_U16, vt, where)
        tbl_size = self.read(_U16, vt + 2, where)
        if vt_size < 4 or vt_size % 2 or vt + vt_size > self.end:
            self.fail(where, vt, f"vtable size {vt_size} is invalid")
        if tbl_size < 4 or pos + tbl_size > self.end:
            self.fail(where, pos, f"table size {tbl_size} runs past the table region")
        for i, (field, kind) in enumerate(SCHEMA[name]):
            slot = 4 + 2 * i
            if slot >= vt_size:
                break
            off = self.read(_U16, vt + slot, where)
            if not off:
                continue
            fwhere = f"{where}.{field}"
            size = kind if isinstance(kind, int) else 4
            if off + size > tbl_size:
                self.fail(fwhere, pos + off, f"field runs past its table ({tbl_size} bytes)")
            fpos = pos + off
            if isinstance(kind, int):
                continue
            tag = kind[0]
            if tag == "str":
                self.string(fpos, fwhere)
            elif tag == "table":
                stack.append((self.follow(fpos, fwhere), kind[1], fwhere))
            elif tag == "vec":
                self.vector(fpos, kind[1], fwhere)
            elif tag == "vec_str":
                start, n = self.vector(fpos, 4, fwhere)
                for j in range(n):
                    self.string(start + 4 * j, f"{fwhere}[{j}]")
            else:  # vec_table
                start, n = self.vector(fpos, 4, fwhere)
                for j in range(n):
                    stack.append((self.follow(start + 4 * j, f"{fwhere}[{j}]"), kind[1], f"{fwhere}[{j}]"))


def verify_buffer(buf, end: int) -> None:
    """Check the FlatBuffer in `buf[:end]` against the schema; raises `ModelFormatError`.

    >>> verify_buffer(b"\\0" * 8, 8)
    Traceback (most recent call last):
    ...
    runtime.errors.ModelFormatError: Model (offset 0): vtable size 0 is invalid
    """
    c = _Checker(buf, end)
    stack = [(c.follow(0, "root offset"), "Model", "Model")]
    # iterative (the schema is not recursive, but an explicit stack keeps the depth obvious)
    while stack:
        pos, name, where = stack.pop()
        c.table(pos, name, where, stack)
