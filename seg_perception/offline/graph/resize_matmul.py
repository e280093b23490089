"""The network's bilinear ``Resize`` nodes as two matrix products (ONNX graph surgery, no checkpoint needed).

TopFormer and SeaFormer upsample 128-channel feature maps bilinearly inside the network: the global tokens to
each local scale, and the decoder's coarse scales to 1/8. ONNX Runtime's float ``Resize`` is a per-pixel loop
(about 2 ns per output value here): at 256x320 the shipped TopFormer-tiny spent 1.7 ms of its ~4.3 ms network in
its eight Resize nodes (one thread). Bilinear resizing is separable and linear, so with an (H, h) row matrix
``Wy`` and a (w, W) column matrix ``Wx`` the output is ``Wy @ X @ Wx``, and ONNX Runtime's matrix multiply does
that in a fraction of the time: the network 1.13-1.21x faster from 256x320 to 736x1280 (README, Benchmarks).

The matrices are built inside the graph from the node's input shape and output ``sizes`` (``half_pixel``
coordinates, edges clamped: what ``F.interpolate(mode='bilinear', align_corners=False)`` exports), so the graph
keeps its dynamic height and width; the engine fixes the input size when it opens a session, and ONNX Runtime
then folds them into constants. Values equal the Resize's up to float rounding (1e-6).

Left as they are: the labels tail of a ``labels`` model (its final Resize of the logits to the input size,
which ``logits_head`` and the peer benchmark look for), Resize nodes given ``scales`` instead of ``sizes``, other
modes and coordinate rules, and any whose ``sizes`` do not keep the input's batch and channels as torch's export
does. Quantize the file before this rewrite, not after: int8 ``Resize`` is already fast, and quantizing the
matrices would wreck the labels.

    python -m seg_perception.offline.graph.resize_matmul models/topformer_tiny_scenes.onnx -o out.onnx
"""
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_graph import (
    file_tool,
    postprocess_node_names,
    random_image_outputs,
    read_metadata,
    replace_field,
    tensor_producers,
)

MARK = '/as_matmul/'   # in the names of the nodes this rewrite adds


class _Builder:
    """Appends nodes named under ``prefix``; each helper returns its output's name."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes = prefix, []

    def node(self, op: str, *inputs: str, **attrs) -> str:
        out = f'{self.prefix}{op}_{len(self.nodes)}'
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: npt.ArrayLike) -> str:
        value = np.asarray(value)
        out = f'{self.prefix}Constant_{len(self.nodes)}'
        self.nodes.append(helper.make_node('Constant', [], [out], name=out, value=numpy_helper.from_array(value, out)))
        return out

    def dim(self, shape: str, axis: int) -> str:
        """Element ``axis`` of a 1-D int64 tensor, as a scalar."""
        return self.node('Squeeze', self.node('Slice', shape, self.const([axis]), self.const([axis + 1])))

    def weights(self, n_in: str, n_out: str) -> str:
        """The (n_in, n_out) bilinear matrix for int64 scalars ``n_in``, ``n_out``: column o holds 1 - f at
        i0 and f at i1, where ONNX Runtime's half_pixel rule puts output o at x = (o + 0.5) / (n_out / n_in) -
        0.5, clamped to [0, n_in - 1], i0 = floor(x), i1 = min(i0 + 1, n_in - 1), f = x - i0."""
        zero, one = self.const(np.int64(0)), self.const(np.int64(1))
        half, onef, zerof = self.const(np.float32(0.5)), self.const(np.float32(1.0)), self.const(np.float32(0.0))
        n_in_f = self.node('Cast', n_in, to=TensorProto.FLOAT)
        n_out_f = self.node('Cast', n_out, to=TensorProto.FLOAT)
        o = self.node('Cast', self.node('Range', zero, n_out, one), to=TensorProto.FLOAT)          # (n_out,)
        x = self.node('Sub', self.node('Div', self.node('Add', o, half), self.node('Div', n_out_f, n_in_f)), half)
        last = self.node('Sub', n_in_f, onef)
        x = self.node('Min', self.node('Max', x, zerof), last)
        i0 = self.node('Floor', x)
        frac = self.node('Sub', x, i0)
        i1 = self.node('Min', self.node('Add', i0, onef), last)
        k = self.node('Unsqueeze', self.node('Cast', self.node('Range', zero, n_in, one), to=TensorProto.FLOAT),
                      self.const([1]))                                                            # (n_in, 1)
        at = lambda i: self.node('Cast', self.node('Equal', k, i), to=TensorProto.FLOAT)      # noqa: E731
        return self.node('Add', self.node('Mul', at(i0), self.node('Sub', onef, frac)), self.node('Mul', at(i1), frac))


def _rewritable(node, producers) -> bool:
    """A bilinear half-pixel Resize given ``sizes`` = Concat(Shape(x)[0:2], new H and W), as torch exports."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (node.op_type != 'Resize' or attrs.get('mode') != b'linear' or attrs.get('antialias', 0) or attrs.get('axes')
            or attrs.get('coordinate_transformation_mode', b'half_pixel') != b'half_pixel'
            or len(node.input) != 4 or not node.input[3]):
        return False
    concat = producers.get(node.input[3])
    if concat is None or concat.op_type != 'Concat' or len(concat.input) != 2:
        return False
    head = producers.get(concat.input[0])
    if head is None or head.op_type != 'Slice' or len(head.input) < 3:
        return False
    shape = producers.get(head.input[0])
    bounds = [producers.get(name) for name in head.input[1:3]]
    if shape is None or shape.op_type != 'Shape' or shape.input[0] != node.input[0] or shape.attribute:
        return False
    values = []
    for const in bounds:
        if const is None or const.op_type != 'Constant':
            return False
        values.append(numpy_helper.to_array(const.attribute[0].t).reshape(-1).tolist())
    return values == [[0], [2]]


def resize_as_matmul(proto: onnx.ModelProto) -> int:
    """Rewrite ``proto`` in place (see the module's docstring); returns how many Resize nodes were replaced.
    ValueError for an int8 (QDQ) graph."""
    graph = proto.graph
    if any(node.op_type in ('QuantizeLinear', 'DequantizeLinear') for node in graph.node):
        raise ValueError('the graph is quantized (QDQ): its int8 Resize nodes are already fast')
    producers = tensor_producers(graph)
    tail = set(postprocess_node_names(proto))   # empty for a logits model
    nodes, replaced = [], 0
    for node in graph.node:
        if node.name in tail or not _rewritable(node, producers):
            nodes.append(node)
            continue
        b = _Builder(f'{node.name or node.output[0]}{MARK}')
        x, sizes = node.input[0], node.input[3]
        shape = b.node('Shape', x)
        wy = b.node('Transpose', b.weights(b.dim(shape, 2), b.dim(sizes, 2)), perm=[1, 0])       # (H, h)
        wx = b.weights(b.dim(shape, 3), b.dim(sizes, 3))                                          # (w, W)
        rows = b.node('MatMul', wy, x)                            # (N, C, H, w): one small product per channel
        b.nodes.append(helper.make_node('MatMul', [rows, wx], [node.output[0]], name=f'{b.prefix}MatMul_out'))
        nodes.extend(b.nodes)
        replaced += 1
    replace_field(graph.node, nodes)
    onnx.checker.check_model(proto)
    return replaced


def is_rewritten(proto: onnx.ModelProto) -> bool:
    return any(MARK in node.name for node in proto.graph.node)


def convert_file(src: str, dst: str, tolerance: float = 1e-4) -> int:
    """Rewrite ``src`` into ``dst`` (may be the same path) after checking that ONNX Runtime gives the same
    outputs (relative difference at most ``tolerance``) at the input size in its metadata; returns the number of
    Resize nodes replaced (ValueError, nothing written, when the outputs differ)."""
    proto = onnx.load(str(src))
    size = tuple(read_metadata(proto)['input_size'])
    before = random_image_outputs(proto, size).values()
    replaced = resize_as_matmul(proto)
    for ref, new in zip(before, random_image_outputs(proto, size).values()):
        diff = np.abs(new - ref).max() if ref.dtype.kind == 'f' else 0.0
        if diff > tolerance * max(np.abs(ref).max(), 1e-6):
            raise ValueError(f'the rewritten graph differs from the original (max |diff| {diff:.3g})')
    onnx.save_model(proto, str(dst), save_as_external_data=False)
    return replaced


def main(argv: Sequence[str] | None = None) -> int:
    def convert(model: str, output: str) -> str:
        return f'wrote {output}: {convert_file(model, output)} Resize node(s) as matrix products'
    return file_tool(argv, 'seg_perception.offline.graph.resize_matmul', __doc__,
                     'an exported seg_perception .onnx file (float)', convert)


if __name__ == '__main__':
    sys.exit(main())
