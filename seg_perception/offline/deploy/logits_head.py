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

    python -m seg_perception.offline.deploy.logits_head models/topformer_tiny_scenes.onnx -o out.onnx
"""
import sys
from pathlib import Path

import onnx

from .onnx_graph import OUTPUTS, file_tool, logits_tensor_name, read_metadata, replace_field, set_metadata


def to_logits_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a ``labels`` model whose outputs are ``logits`` (N, C, h, w) plus its non-label outputs."""
    meta = read_metadata(proto)
    if meta['output_kind'] == 'logits':
        raise ValueError('the model already outputs logits')
    out = onnx.ModelProto()
    out.CopyFrom(proto)
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
    num_classes = len(meta['names'])
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT,
                                                           [1, num_classes, None, None]))
    graph.output.extend(extra)
    used = {name for node in graph.node for name in node.input}
    replace_field(graph.initializer, [t for t in graph.initializer if t.name in used])
    set_metadata(out, dict(meta, output_kind='logits'))
    onnx.checker.check_model(out)
    return out


def convert_file(src: str, dst: str) -> dict:
    """Convert ``src`` to a logits model at ``dst`` (may be the same path)."""
    proto = onnx.load(str(src))
    converted = to_logits_model(proto)
    onnx.save_model(converted, str(dst), save_as_external_data=False)
    return {'src': str(src), 'dst': str(dst), 'bytes': Path(dst).stat().st_size,
            'removed_nodes': len(proto.graph.node) + 1 - len(converted.graph.node)}


def main(argv=None) -> int:
    def convert(model, output):
        report = convert_file(model, output)
        return (f'wrote {report["dst"]} ({report["bytes"] / 1e6:.2f} MB, {report["removed_nodes"]} nodes removed, '
                'outputs logits at 1/8)')
    return file_tool(argv, 'seg_perception.offline.deploy.logits_head', __doc__,
                     'a seg_perception model with labels/confidence outputs', convert)


if __name__ == '__main__':
    sys.exit(main())
