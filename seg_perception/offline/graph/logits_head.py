"""Turn a ``labels``-head model file into a ``logits``-head one by ONNX graph surgery (no checkpoint needed).

A ``labels`` model (``output_kind: labels``) upsamples its 1/8 logits to the network input size inside the
graph, then takes argmax and max softmax. At 150 classes that tail costs several times the network, and the
engine then resizes the labels to the camera with nearest neighbour. A ``logits`` model stops at the 1/8
logits; the engine's :class:`seg_perception.runtime.upsample.LogitsUpsampler` turns them into labels at the
camera's own resolution, equal to bilinear-upsample-then-argmax, for a fraction of the cost.

The surgery outputs the logits tensor (:func:`onnx_graph.logits_tensor_name`) as ``logits`` (other outputs such
as ``kept_fraction`` / ``macs`` stay), keeps only the nodes and initializers those outputs need (the Resize /
argmax / softmax tail goes) and sets ``output_kind`` to ``logits``. The weights are untouched, so the logits
are bit-identical.

``--layout nhwc`` (also for a model that already outputs (N, C, h, w) logits) ends the graph with a Transpose to
per-pixel rows (N, h, w, C) and records ``logits_layout: nhwc``: ONNX Runtime folds it into the layout reorder
that ends its graph anyway, and the upsampler then reads the rows it needs with many classes without
transposing them itself (``bench peer``: 0.4 ms of a 150-class frame at 480x640).

    python -m seg_perception.offline.graph.logits_head models/topformer_tiny_scenes.onnx -o out.onnx
    python -m seg_perception.offline.graph.logits_head ade_model.onnx -o ade_model.onnx --layout nhwc
"""
import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

from ...runtime.metadata import LOGITS_LAYOUTS
from .onnx_graph import OUTPUTS, file_tool, logits_tensor_name, read_metadata, replace_field, set_metadata


def per_pixel_logits(graph: onnx.GraphProto) -> None:
    """Make ``graph``'s ``logits`` output (N, C, h, w) per-pixel rows (N, h, w, C), in place: one Transpose."""
    for node in graph.node:
        node.output[:] = ['logits_nchw' if name == 'logits' else name for name in node.output]
    graph.node.append(onnx.helper.make_node('Transpose', ['logits_nchw'], ['logits'], perm=[0, 2, 3, 1],
                                            name='logits_per_pixel'))
    dims = next(o for o in graph.output if o.name == 'logits').type.tensor_type.shape.dim
    if len(dims) == 4:
        moved = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
        for dim, axis in zip(moved, (0, 2, 3, 1)):
            dim.CopyFrom(dims[axis])
        del dims[:]
        dims.extend(moved)


def to_logits_model(proto: onnx.ModelProto, layout: str = 'nchw') -> onnx.ModelProto:
    """A copy of a ``labels`` model whose outputs are ``logits`` (N, C, h, w), or (N, h, w, C) for ``layout``
    'nhwc', plus its non-label outputs; a ``logits`` model's (N, C, h, w) logits made per-pixel with 'nhwc'."""
    meta = read_metadata(proto)
    if meta['output_kind'] == 'logits' and (layout == 'nchw' or meta.get('logits_layout') == 'nhwc'):
        raise ValueError('the model already outputs logits' + (' per pixel (nhwc)' if layout == 'nhwc' else ''))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if meta['output_kind'] == 'labels':
        _cut_labels_tail(out, len(meta['names']))
    if layout == 'nhwc':
        per_pixel_logits(out.graph)
        meta['logits_layout'] = 'nhwc'
    set_metadata(out, dict(meta, output_kind='logits'))
    onnx.checker.check_model(out)
    return out


def _cut_labels_tail(out: onnx.ModelProto, num_classes: int) -> None:
    """Output the 1/8 logits as ``logits`` and drop the labels tail (in place)."""
    graph = out.graph
    logits = logits_tensor_name(out)
    extra = [o for o in graph.output if o.name not in OUTPUTS]
    # keep only the nodes the new outputs need (the tail goes; a Constant the tail shared with others stays)
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    keep, stack = set(), [logits] + [o.name for o in extra]
    while stack:
        i = producer.get(stack.pop())
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(graph.node[i].input)
    replace_field(graph.node, [node for i, node in enumerate(graph.node) if i in keep])
    graph.node.append(onnx.helper.make_node('Identity', [logits], ['logits'], name='logits_output'))
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT,
                                                           [1, num_classes, None, None]))
    graph.output.extend(extra)
    used = {name for node in graph.node for name in node.input}
    replace_field(graph.initializer, [t for t in graph.initializer if t.name in used])


def convert_file(src: str, dst: str, layout: str = 'nchw') -> dict:
    """Convert ``src`` to a logits model at ``dst`` (may be the same path), its logits in ``layout``."""
    proto = onnx.load(str(src))
    converted = to_logits_model(proto, layout)
    onnx.save_model(converted, str(dst), save_as_external_data=False)
    added = (read_metadata(proto)['output_kind'] == 'labels') + (layout == 'nhwc')   # Identity, Transpose
    return {'src': str(src), 'dst': str(dst), 'bytes': Path(dst).stat().st_size,
            'removed_nodes': len(proto.graph.node) + added - len(converted.graph.node)}


def main(argv: Sequence[str] | None = None) -> int:
    def convert(model: str, output: str, layout: str) -> str:
        report = convert_file(model, output, layout)
        return (f'wrote {report["dst"]} ({report["bytes"] / 1e6:.2f} MB, {report["removed_nodes"]} nodes removed, '
                f'outputs logits at 1/8, {layout})')

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--layout', choices=LOGITS_LAYOUTS, default='nchw',
                            help='nchw: (N, C, h, w) logits; nhwc: per-pixel rows (N, h, w, C), cheaper for the '
                                 'engine with many classes')
    return file_tool(argv, 'seg_perception.offline.graph.logits_head', __doc__,
                     'a seg_perception model (labels/confidence outputs, or logits for --layout nhwc)', convert,
                     add_arguments)


if __name__ == '__main__':
    sys.exit(main())
