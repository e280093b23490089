"""Whitened pooled features inside a model's graph, for the domain-shift monitor (``calibrate --taps``).

A tap is an internal tensor (N, C, h, w) of the network and a statistic over its spatial positions: ``mean``
(the channel means) or ``std`` (the log of the channel standard deviations). For each tap the graph computes
the statistic, subtracts the training mean and multiplies by a whitening matrix W (W W^T = the precision of the
shrunk training covariance), so the length of that block is the tap's Mahalanobis distance. The blocks are
concatenated into one extra output, ``shift_features`` (1, D); :class:`seg_perception.runtime.shift.ShiftScorer`
reads the block sizes from the metadata. The statistics cost a few pooling nodes and one (1, C) x (C, C) product
per tap; the labels and logits of the model are untouched.

Taps are named by the prefix of the node names that produce them: the tensor is the output of the last node
(in graph order) whose name starts with it. ``TOPFORMER_TAPS`` gives short names for the TopFormer exports:
``stem`` (the first convolutions, 1/2 resolution), ``tpm1`` ... ``tpm9`` (the token pyramid's inverted-residual
layers, 1/2 to 1/32), ``ppa`` (the pooled token pyramid, 1/64), ``trans`` (the global tokens after the
transformer) and ``fuse`` (the decode head's fused features, 1/8).
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph.onnx_graph import replace_field

OUTPUT = 'shift_features'
STATS = ('mean', 'std')
TOPFORMER_TAPS = {'stem': '/model/backbone/tpm/stem/', 'ppa': '/model/backbone/ppa/', 'trans': '/model/backbone/trans/',
                  'fuse': '/model/decode_head/linear_fuse/',
                  **{f'tpm{i}': f'/model/backbone/tpm/layer{i}/' for i in range(1, 10)}}


def parse_taps(text: str) -> list[tuple[str, str]]:
    """``stem:std,trans:mean`` -> [(prefix or short name, statistic), ...]; ValueError names a bad entry."""
    taps = []
    for entry in (e.strip() for e in text.split(',') if e.strip()):
        name, _, stat = entry.rpartition(':')
        if not name or stat not in STATS:
            raise ValueError(f'tap {entry!r} is not NAME:{"|".join(STATS)} (NAME: {", ".join(TOPFORMER_TAPS)} '
                             'or a node-name prefix)')
        taps.append((name, stat))
    if not taps:
        raise ValueError('no taps given')
    return taps


def tap_tensor(graph: onnx.GraphProto, name: str) -> str:
    """The output of the last node whose name starts with the tap's prefix (``name`` or its short form)."""
    prefix = TOPFORMER_TAPS.get(name, name)
    nodes = [n for n in graph.node if n.name.startswith(prefix)]
    if not nodes:
        raise ValueError(f'tap {name!r}: no node name starts with {prefix!r} in this graph')
    return nodes[-1].output[0]


def _const(graph, name, array):
    graph.initializer.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
    return name


def add_shift_features(proto: onnx.ModelProto, taps: list[tuple[str, str]], channels: list[int]) -> list[dict]:
    """Append the pooled, whitened tap statistics to ``proto`` as output ``shift_features``, with identity
    whitening (mean 0, W = I: the raw statistics) until :func:`set_whitening`; ``channels`` are the taps'
    channel counts. Returns the metadata groups [{'name', 'stat', 'size'}]."""
    graph, blocks, groups = proto.graph, [], []
    for i, ((name, stat), size) in enumerate(zip(taps, channels)):
        x, p = tap_tensor(graph, name), f'shift_tap{i}'
        nodes = [helper.make_node('GlobalAveragePool', [x], [f'{p}_m'], name=f'{p}/mean')]
        if stat == 'std':   # log sqrt(E[x^2] - E[x]^2), floored: a constant channel must not give log(0)
            nodes += [helper.make_node('Mul', [x, x], [f'{p}_xx'], name=f'{p}/square'),
                      helper.make_node('GlobalAveragePool', [f'{p}_xx'], [f'{p}_m2'], name=f'{p}/mean_square'),
                      helper.make_node('Mul', [f'{p}_m', f'{p}_m'], [f'{p}_mm'], name=f'{p}/mean_squared'),
                      helper.make_node('Sub', [f'{p}_m2', f'{p}_mm'], [f'{p}_var'], name=f'{p}/variance'),
                      helper.make_node('Max', [f'{p}_var', _const(graph, f'{p}_eps', [1e-8])], [f'{p}_varc'],
                                       name=f'{p}/floor'),
                      helper.make_node('Log', [f'{p}_varc'], [f'{p}_logvar'], name=f'{p}/log'),
                      helper.make_node('Mul', [f'{p}_logvar', _const(graph, f'{p}_half', [0.5])], [f'{p}_s'],
                                       name=f'{p}/log_std')]
            pooled = f'{p}_s'
        else:
            pooled = f'{p}_m'
        nodes += [helper.make_node('Flatten', [pooled], [f'{p}_flat'], name=f'{p}/flatten'),
                  helper.make_node('Sub', [f'{p}_flat', _const(graph, f'{p}_center', np.zeros(size))], [f'{p}_d'],
                                   name=f'{p}/center'),
                  helper.make_node('MatMul', [f'{p}_d', _const(graph, f'{p}_whiten', np.eye(size))], [f'{p}_w'],
                                   name=f'{p}/whiten')]
        graph.node.extend(nodes)
        blocks.append(f'{p}_w')
        groups.append({'name': name, 'stat': stat, 'size': int(size)})
    graph.node.append(helper.make_node('Concat', blocks, [OUTPUT], axis=1, name='shift_features/concat'))
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, [1, sum(channels)]))
    return groups


def remove_shift_features(proto: onnx.ModelProto) -> None:
    """Take what :func:`add_shift_features` added out of ``proto`` again (nodes, constants, the output)."""
    graph = proto.graph
    replace_field(graph.node, [n for n in graph.node if not n.name.startswith(('shift_tap', 'shift_features/'))])
    replace_field(graph.initializer, [i for i in graph.initializer if not i.name.startswith('shift_tap')])
    replace_field(graph.output, [o for o in graph.output if o.name != OUTPUT])


def set_whitening(proto: onnx.ModelProto, centers: list[np.ndarray], whiteners: list[np.ndarray]) -> None:
    """Store each tap's training mean and whitening matrix in the initializers :func:`add_shift_features` made."""
    inits = {init.name: init for init in proto.graph.initializer}
    for i, (center, whiten) in enumerate(zip(centers, whiteners)):
        for key, value in ((f'shift_tap{i}_center', center), (f'shift_tap{i}_whiten', whiten)):
            inits[key].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), key))


def tap_channels(proto: onnx.ModelProto, taps: list[tuple[str, str]], image: np.ndarray) -> list[int]:
    """The channel count of each tap, measured by running the graph once on ``image`` (1, 3, H, W)."""
    import onnxruntime as ort
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = [tap_tensor(probe.graph, name) for name, _ in taps]
    for t in names:
        probe.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=['CPUExecutionProvider'])
    # a knob input (refine_threshold, exit_threshold: float scalars) at 1.0, its every-path end
    knobs = {i.name: np.array(1.0, np.float32) for i in session.get_inputs() if i.name != 'images' and not i.shape}
    values = session.run(names, {'images': image, **knobs})
    for (name, _), v in zip(taps, values):
        if v.ndim != 4:
            raise ValueError(f'tap {name!r} is a {v.ndim}-D tensor; taps must be (N, C, h, w) feature maps')
    return [int(v.shape[1]) for v in values]


def fit_whitening(features: np.ndarray, shrinkage: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(mean, W) of (N, C) training statistics: W W^T = inverse of the covariance shrunk towards its average
    variance (``shrinkage``), so |(x - mean) W| is the Mahalanobis distance."""
    x = np.asarray(features, np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False).reshape(len(mean), len(mean))
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / len(mean) + 1e-9) * np.eye(len(mean))
    return mean, np.linalg.cholesky(np.linalg.inv(cov))
