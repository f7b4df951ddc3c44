"""Reverse-mode AD through `if` and `loop`: gradients of scripted functions vs finite differences.

Each case is checked three ways that must agree: `ir.grad(tracer.trace(...))` run by
`ir.interpret` (the `if`/`loop` rules), that gradient graph saved as `.castml` and run by
`runtime.load`, and `tracer.grad` of the scripted function (which follows the concrete values,
as `jax.grad` does, so the control flow is unrolled: an independent reference). The reference
for all is fourth-order central differences of the function run eagerly in float64; those
carry truncation error, so they are compared with the FD tolerance of tests/test_autodiff.py,
while the engines are compared with the one agreement rule.
"""

from __future__ import annotations

import numpy as np
import pytest

import exporters
import ir
import runtime
import tracer
from ir.autodiff import AutodiffError
from tests.helpers import assert_agree
from tracer import TensorSpec

FD_STEP = 1e-3
FD_RTOL, FD_ATOL = 1e-6, 1e-7


def fd_gradient(fn, args: list, wrt: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Fourth-order central differences of the scalar `fn(*args)` w.r.t. the arguments `wrt`."""
    grads = []
    for i in wrt:
        x = np.array(args[i], dtype=np.float64)
        out = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            vals = []
            for k in (-2, -1, 1, 2):
                xk = x.copy()
                xk[idx] += k * FD_STEP
                vals.append(float(fn(*args[:i], xk, *args[i + 1:])))
            out[idx] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * FD_STEP)
        grads.append(out)
    return tuple(grads)


def assert_fd_close(got, ref, what: str) -> None:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{what}: {got.dtype}{got.shape} vs {ref.dtype}"
    tol = FD_RTOL * np.abs(ref) + FD_ATOL * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    bad = np.abs(got - ref) > tol
    assert not bad.any(), f"{what}: AD {got[bad][:5]} vs FD {ref[bad][:5]} ({bad.sum()} of {bad.size} differ)"


def check(fn, specs: list, arg_sets: list[list], wrt: tuple[int, ...], tmp_path) -> ir.Graph:
    """The gradient of scripted `fn` w.r.t. `wrt`, traced once with `specs`, run on every set of
    arguments by the three engines and compared with finite differences; returns the graph."""
    g = tracer.trace(fn, *specs)
    gg = ir.grad(g, wrt=wrt)
    ir.verify(gg)
    assert ir.parse(gg.to_text()) == gg
    path = str(tmp_path / "g.castml")
    exporters.save(gg, path)
    session = runtime.load(path)
    for args in arg_sets:
        ref = fd_gradient(fn, args, wrt)
        got = ir.interpret(gg, *args)
        for k, (a, r) in enumerate(zip(got, ref)):
            assert_fd_close(a, r, f"{fn.__name__} d/d{g.arg_names[wrt[k]]} at {args}")
        assert_agree(session.run(*args), got)
        assert_agree(tuple(tracer.grad(fn, argnums=wrt)(*args)), got)
    return gg


def kinds(g: ir.Graph) -> list[str]:
    return [op.kind for op in g.walk()]


# --- if ----------------------------------------------------------------------------------------------
@tracer.script
def branchy(x, w):
    if x.sum() > 0.0:
        y = np.tanh(x * w) + x   # uses the captured w
    else:
        y = x * x                # does not: w gets zeros from this branch
    return (y * w).sum()


@tracer.script
def branch_shapes(x, w):
    if (x * w).sum() > 0.0:
        y = x[1:] * w[1:]        # the branches yield different lengths: a fresh dim on the if
    else:
        y = np.exp(x)
    return (y * y).sum()


def test_if_both_branches_and_captured_values(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(4)
    pos, neg = np.abs(rng.standard_normal(4)), -np.abs(rng.standard_normal(4))
    gg = check(branchy, [np.zeros(4), w], [[pos, w], [neg, w], [neg, -w]], (0, 1), tmp_path)
    assert kinds(gg).count("if") >= 1


def test_if_whose_branches_yield_different_shapes(tmp_path):
    rng = np.random.default_rng(1)
    w = np.abs(rng.standard_normal(5))
    x = np.abs(rng.standard_normal(5))
    check(branch_shapes, [x, w], [[x, w], [-x, w]], (0, 1), tmp_path)


def test_if_gradient_is_itself_an_if_on_the_same_condition():
    gg = ir.grad(tracer.trace(branchy, np.ones(3), np.ones(3)), wrt=(0, 1))
    fwd, bwd = [op for op in gg.ops if op.kind == "if"]  # the forward result is needed by d(y*w)/dw
    assert bwd.inputs[0] is fwd.inputs[0]
    # it yields the cotangents of the captured x and w, typed like them
    assert [str(v.type) for v in bwd.outputs] == ["f64[3]", "f64[3]"]


# --- loop --------------------------------------------------------------------------------------------
@tracer.script
def rnn_loss(x, w, h, n):
    for t in range(n):
        h = np.tanh(h @ w + x[t])
    return (h * h).sum()


@tracer.script
def loop_with_if(x, w, n):
    h = x[0]
    for t in range(n):
        h = np.tanh(h @ w + x[t])
        if h.sum() > 0.0:
            h = h * 0.5
        else:
            h = h + x[0] * w[0]
    return h.sum()


@tracer.script
def while_data_dependent(x, w):
    h = x
    k = 0
    while (h * h).sum() < 20.0:  # the trip count depends on the values
        h = h * w + 0.5
        k = k + 1
    return h.sum() * k


@tracer.script
def nested_loops(x, w, n):
    h = x
    for i in range(n):
        for _j in range(i + 1):
            h = np.sin(h * w) + h
    return (h * h).sum()


@tracer.script
def with_break(x, w, n):
    h = x
    for _t in range(n):
        h = np.tanh(h * w + 1.0)
        if h.sum() > 1.5:
            break
    return h.sum()


def test_rnn_over_a_traced_trip_count(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 3))
    w = rng.standard_normal((3, 3)) * 0.6
    h = rng.standard_normal(3)
    specs = [TensorSpec(("T", 3), np.float64), w, h, np.int64(0)]
    sets = [[x, w, h, np.int64(n)] for n in (0, 1, 4)] + [[x[:2], w, h, np.int64(2)]]
    gg = check(rnn_loss, specs, sets, (0, 1, 2), tmp_path)
    assert kinds(gg).count("loop") >= 2  # the forward that stacks the states, and the reverse one


def test_loop_with_a_data_dependent_if_inside(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3))
    w = rng.standard_normal((3, 3)) * 0.8
    specs = [TensorSpec(("T", 3), np.float64), w, np.int64(0)]
    sets = [[x, w, np.int64(5)], [-x, w, np.int64(3)], [x, -w, np.int64(5)]]
    gg = check(loop_with_if, specs, sets, (0, 1), tmp_path)
    taken = set()  # the cases really take both branches inside the loop
    for args in sets:
        h = args[0][0]
        for t in range(int(args[2])):
            h = np.tanh(h @ args[1] + args[0][t])
            taken.add(bool(h.sum() > 0.0))
            h = h * 0.5 if h.sum() > 0.0 else h + args[0][0] * args[1][0]
    assert taken == {True, False}
    assert "if" in kinds(gg)


def test_while_with_a_data_dependent_trip_count(tmp_path):
    w = np.array([1.3, 1.1, 1.2])
    check(while_data_dependent, [np.ones(3), w],
          [[np.array([0.5, 0.2, 0.1]), w], [np.array([1.0, 2.0, 0.5]), w], [np.array([5.0, 0.0, 0.0]), w]],
          (0, 1), tmp_path)


def test_nested_loops(tmp_path):
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(3), rng.standard_normal(3) * 0.5
    check(nested_loops, [x, w, np.int64(0)], [[x, w, np.int64(n)] for n in (0, 1, 3)], (0, 1), tmp_path)


def test_break(tmp_path):
    x, w = np.array([0.1, 0.2, 0.3]), np.array([0.9, 1.1, 1.3])
    check(with_break, [x, w, np.int64(0)], [[x, w, np.int64(n)] for n in (0, 2, 8)], (0, 1), tmp_path)


def test_vjp_of_a_loop_with_several_carried_values():
    @tracer.script
    def two(a, b, n):
        for _i in range(n):
            a, b = a * b, np.sin(a) + b
        return a, b

    g = tracer.trace(two, np.ones(2), np.ones(2), np.int64(3))
    dg = ir.vjp(g)
    ir.verify(dg)
    rng = np.random.default_rng(5)
    a, b, ca, cb = (rng.standard_normal(2) for _ in range(4))
    (oa, ob), (da, db, _) = ir.interpret(dg, a, b, np.int64(3), (ca, cb))
    assert_agree((oa, ob), two(a, b, 3))

    def scalar(a, b):
        ya, yb = two(a, b, 3)
        return (ya * ca).sum() + (yb * cb).sum()
    ra, rb = fd_gradient(scalar, [a, b], (0, 1))
    assert_fd_close(da, ra, "d/da")
    assert_fd_close(db, rb, "d/db")


def hessian_vector_graph(g1: ir.Graph, v: np.ndarray) -> ir.Graph:
    """<gradient, v> as a graph: its gradient is the Hessian times v."""
    b = ir.autodiff.Builder(g1)
    s = b.op("reduce_sum", b.mul(g1.outputs[0], b.op("constant", value=v)), axes=tuple(range(v.ndim)),
             keepdims=False)
    g1.outputs, g1.out_tree = [s], ("*",)
    return g1


def test_second_derivative_through_an_if():
    w = np.array([0.7, 1.1, -0.4])
    v = np.array([0.6, -1.3, 0.2])
    g1 = hessian_vector_graph(ir.grad(tracer.trace(branchy, np.ones(3), w), wrt=1), v)
    hg = ir.grad(g1, wrt=1)
    ir.verify(hg)
    for x in (np.array([0.3, 0.2, 0.1]), np.array([-0.3, 0.2, -0.1])):
        (ref,) = fd_gradient(lambda x, w: ir.interpret(g1, x, w), [x, w], (1,))
        assert_fd_close(ir.interpret(hg, x, w), ref, "Hessian-vector product")


def test_second_derivative_through_a_loop():
    rng = np.random.default_rng(7)
    x, w, h = rng.standard_normal((4, 2)), rng.standard_normal((2, 2)) * 0.7, rng.standard_normal(2)
    v = rng.standard_normal((2, 2))
    g1 = hessian_vector_graph(ir.grad(tracer.trace(rnn_loss, TensorSpec(("T", 2), np.float64), w, h, np.int64(0)),
                                      wrt=1), v)
    hg = ir.grad(g1, wrt=(0, 1))
    ir.verify(hg)
    for n in (0, 1, 3):
        args = [x, w, h, np.int64(n)]
        ref = fd_gradient(lambda *a: ir.interpret(g1, *a), args, (0, 1))
        for got, r in zip(ir.interpret(hg, *args), ref):
            assert_fd_close(got, r, f"Hessian-vector product, n={n}")


def test_values_collected_by_appending_in_a_loop(tmp_path):
    @tracer.script
    def collect(x, w, n):
        h = x
        hs = np.zeros((0, 3))
        for _t in range(n):
            h = np.tanh(h * w + 0.1)
            hs = np.concatenate([hs, h[None]])
        return (hs * hs).sum() + h.sum()

    rng = np.random.default_rng(8)
    x, w = rng.standard_normal(3), rng.standard_normal(3)
    check(collect, [x, w, np.int64(0)], [[x, w, np.int64(n)] for n in (0, 1, 4)], (0, 1), tmp_path)


def test_a_carried_value_that_changes_shape_is_refused():
    @tracer.script
    def grows(x, n):
        y = x
        for _i in range(n):
            y = np.concatenate([y, x])
            y = y * 0.5  # read after growing: its states would have to be stacked
        return y.sum()

    g = tracer.trace(grows, np.ones(2), np.int64(2))
    with pytest.raises(AutodiffError, match="change shape across iterations"):
        ir.grad(g)


def fused_chain(x, w):
    return np.sum(np.where(x > 0.0, np.tanh(x * w), np.sin(x) * w) * x)


def test_fused_elementwise_chain(tmp_path):
    # ir.optimize turns the chain into one `fused_elementwise` op owning it as a region
    g = ir.optimize(tracer.trace(fused_chain, TensorSpec((2, 3), np.float64), TensorSpec((3,), np.float64)))
    assert "fused_elementwise" in kinds(g)
    gg = ir.grad(g, wrt=(0, 1))
    ir.verify(gg)
    path = str(tmp_path / "g.castml")
    exporters.save(gg, path)
    args = [np.array([[0.5, -1.0, 2.0], [-0.3, 0.7, -2.0]]), np.array([0.9, -1.1, 0.4])]
    got = ir.interpret(gg, *args)
    for a, r in zip(got, fd_gradient(fused_chain, args, (0, 1))):
        assert_fd_close(a, r, "fused_chain")
    assert_agree(runtime.load(path).run(*args), got)
    assert_agree(tuple(tracer.grad(fused_chain, argnums=(0, 1))(*args)), got)


def test_every_op_with_regions_has_a_rule_and_is_covered_here():
    region_ops = {k for k, d in ir.REGISTRY.items() if d.num_regions and d.differentiable}
    assert all(ir.get_op(k).vjp is not None for k in region_ops)
    covered = set(kinds(ir.optimize(tracer.trace(fused_chain, np.ones((2, 3)), np.ones(3)))))
    for fn, args in ((branchy, (np.ones(2), np.ones(2))), (loop_with_if, (np.ones((2, 2)), np.eye(2), np.int64(1)))):
        covered.update(kinds(tracer.trace(fn, *args)))
    assert region_ops <= covered, f"ops with regions without a gradient test here: {sorted(region_ops - covered)}"


def test_loop_gradient_exports_to_onnx(tmp_path):
    import onnxruntime as ort
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((3, 3)) * 0.5).astype(np.float32)
    h = rng.standard_normal(3).astype(np.float32)
    g = tracer.trace(loop_with_if, TensorSpec(("T", 3), np.float32), w, np.int64(0))
    gg = ir.grad(g, wrt=(0, 1))
    path = str(tmp_path / "g.onnx")
    exporters.save(gg, path)
    session = ort.InferenceSession(path)
    names = [i.name for i in session.get_inputs()]
    for n in (0, 1, 5):
        x = rng.standard_normal((6, 3)).astype(np.float32) + h
        args = [x, w, np.array(n, np.int64)]
        assert_agree(tuple(session.run(None, dict(zip(names, args)))), tuple(ir.interpret(gg, *args)))
