"""Build small but real seg_perception ONNX models with onnx.helper (no torch needed).

The graph: 8x8 average pooling -> 1x1 conv (3 -> C) -> logits at 1/8; for output_kind 'labels' the logits are
upsampled bilinearly to the input size and turned into labels (argmax) and confidence (max softmax)."""
import numpy as np
import onnx
from onnx import TensorProto, helper

from seg_perception.classes import SCENE_CLASS_NAMES, SCENE_PALETTE
from seg_perception.runtime import metadata


def make_tiny_model(path, num_classes=6, dynamic=True, output_kind='labels', resize_mode='resize',
                    input_size=(64, 64), names=None, palette=None, seed=0):
    rng = np.random.default_rng(seed)
    names = list(names or (SCENE_CLASS_NAMES if num_classes == 6 else [f'c{i}' for i in range(num_classes)]))
    palette = palette or ([list(c) for c in SCENE_PALETTE] if num_classes == 6
                          else [[(i * 37) % 256, (i * 91) % 256, (i * 53) % 256] for i in range(num_classes)])
    h, w = ('H', 'W') if dynamic else input_size
    weight = helper.make_tensor('w', TensorProto.FLOAT, (num_classes, 3, 1, 1),
                                rng.normal(0, 2, (num_classes, 3, 1, 1)).astype(np.float32).ravel())
    bias = helper.make_tensor('b', TensorProto.FLOAT, (num_classes,),
                              rng.normal(0, 0.5, num_classes).astype(np.float32))
    nodes = [helper.make_node('AveragePool', ['images'], ['pooled'], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node('Conv', ['pooled', 'w', 'b'], ['logits8'])]
    inits = [weight, bias]
    if output_kind == 'logits':
        nodes.append(helper.make_node('Identity', ['logits8'], ['logits']))
        outputs = [helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, num_classes, None, None])]
    else:
        inits.append(helper.make_tensor('scales', TensorProto.FLOAT, (4,), [1.0, 1.0, 8.0, 8.0]))
        nodes += [
            helper.make_node('Resize', ['logits8', '', 'scales'], ['up'], mode='linear',
                             coordinate_transformation_mode='half_pixel'),
            helper.make_node('Softmax', ['up'], ['prob'], axis=1),
            helper.make_node('ReduceMax', ['prob'], ['confidence'], keepdims=0, axes=[1]),
            helper.make_node('ArgMax', ['up'], ['labels'], axis=1, keepdims=0),
        ]
        outputs = [helper.make_tensor_value_info('labels', TensorProto.INT64, [1, h, w]),
                   helper.make_tensor_value_info('confidence', TensorProto.FLOAT, [1, h, w])]
    graph = helper.make_graph(nodes, 'tiny_seg', [helper.make_tensor_value_info('images', TensorProto.FLOAT,
                                                                              [1, 3, h, w])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    meta = dict(names=names, palette=palette, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                input_size=list(input_size), resize_mode=resize_mode, output_kind=output_kind,
                dynamic_hw=dynamic, stride=32, arch='tiny_test_graph')
    for k, v in metadata.encode(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def with_shift_threshold(src, dst, threshold):
    """A copy of logits model ``src`` with logits shift statistics whose alarm threshold is ``threshold`` (window 1):
    -1 = every frame alarms, 1e9 = none does."""
    from seg_perception.offline.graph.onnx_graph import read_metadata, set_metadata
    from seg_perception.runtime.shift import feature_names, fit_statistics
    proto = onnx.load(str(src))
    meta = read_metadata(proto)
    features = np.random.default_rng(0).normal(0, 1, (40, len(feature_names(len(meta['names'])))))
    set_metadata(proto, {**meta, 'shift_stats': {**fit_statistics(features, ['entropy']), 'threshold': threshold,
                                                 'window': 1}})
    onnx.save(proto, str(dst))
    return str(dst)
