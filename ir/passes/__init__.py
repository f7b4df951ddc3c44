"""Graph-to-graph passes, one small module each, composed by `PassManager` to a fixpoint.

Every pass is an object with `name` and `run(graph) -> PassResult(graph, modified)`:

| pass | module | does |
|---|---|---|
| `DCE` | dce | drops unused ops (regions too), narrows multi-output ops |
| `CSE` | cse | merges equal ops (commutativity-aware, constants by content) |
| `ConstantFolding` | fold | evaluates constant ops with the runtime's kernels |
| `AlgebraicSimplification` | algebra | x+0, x*1, double negation, transpose/reshape chains, … |
| `ShapeSimplification` | shapes | integer arithmetic on symbolic dims |
| `DedupConstants` | dedup | reshaped/transposed copies of the same weights |
| `RecognizePatterns` | patterns | decomposed softmax, layer_norm, gelu -> single ops |
| `FuseConv` | fuse_conv | conv+batch_norm, conv+bias, conv+activation |
| `FuseLinear` | fuse_linear | matmul+bias(+activation) -> gemm |
| `FuseElementwise` | fuse_elementwise | chains of elementwise ops -> fused_elementwise |
"""

from .algebra import AlgebraicSimplification
from .base import OptimizeReport, Pass, PassManager, PassResult, PassStats, clone_graph, count_ops
from .cse import CSE
from .dce import DCE, eliminate_dead_code
from .dedup import DedupConstants
from .fold import ConstantFolding
from .fuse_conv import FuseConv
from .fuse_elementwise import FuseElementwise
from .fuse_linear import FuseLinear
from .patterns import RecognizePatterns
from .shapes import ShapeSimplification

__all__ = [
    "AlgebraicSimplification", "CSE", "ConstantFolding", "DCE", "DedupConstants", "FuseConv", "FuseElementwise",
    "FuseLinear", "OptimizeReport", "Pass", "PassManager", "PassResult", "PassStats", "RecognizePatterns",
    "ShapeSimplification", "clone_graph", "count_ops", "eliminate_dead_code",
]
