"""An exported adaptive TopFormer's tile buckets, changed without its checkpoint (ONNX graph surgery).

``--tile-buckets`` at export rounds the number of refined tiles up to a few fractions of all tiles, so the deep
head sees a few fixed batch sizes (TensorRT); the padding slots are computed and discarded. The fractions are one
float constant in the graph (multiplied by the tile count, then rounded up): this tool replaces it. The logits
and ``refined_fraction`` stay exactly the same (checked with ONNX Runtime at four knob values before writing);
``macs`` and the time change with the padding. Finer buckets pay fewer masked windows per frame: the shipped
``adaptive_topformer_tiny_scenes.onnx`` at its default knob, 4 -> 9 buckets, 7.84 -> 7.29 ms per 640x480 frame
on one thread (README, "Adaptive TopFormer").

    python -m seg_perception.offline.deploy.tile_buckets models/adaptive_topformer_tiny_scenes.onnx -o out.onnx \\
        --tile-buckets 0.05 0.15 0.25 0.35 0.45 0.55 0.7 0.85 1.0
"""
import argparse
import sys
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.onnx_graph import file_tool, random_image_outputs, read_metadata

CHECK_KNOBS = (0.0, 0.3, 0.6, 1.0)


def bucket_constant(proto: onnx.ModelProto) -> onnx.NodeProto:
    """The ``Constant`` node holding the bucket fractions: a 1-D float constant ending in 1.0 whose ``Mul``
    output is rounded up by a ``Ceil`` (``select_tiles``); ValueError unless there is exactly one."""
    consumers = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in proto.graph.node:
        if node.op_type != 'Constant' or not node.attribute or not node.attribute[0].HasField('t'):
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if value.ndim != 1 or value.dtype.kind != 'f' or not len(value) or value[-1] != 1.0:
            continue
        muls = [c for c in consumers.get(node.output[0], []) if c.op_type == 'Mul']
        if any(c.op_type == 'Ceil' for m in muls for c in consumers.get(m.output[0], [])):
            found.append(node)
    if len(found) != 1:
        raise ValueError(f'{len(found)} tile-bucket constants found (need 1): not an adaptive TopFormer exported '
                         'with --tile-buckets')
    return found[0]


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """Sorted, distinct fractions in (0, 1] ending with 1.0, as float32; ValueError naming the bad value."""
    values = np.asarray(sorted(set(float(f) for f in fractions)), np.float32)
    if not len(values) or values[0] <= 0 or values[-1] != 1.0:
        raise ValueError(f'tile buckets {list(fractions)} must be fractions in (0, 1] including 1.0')
    return values


def set_tile_buckets(proto: onnx.ModelProto, fractions: Sequence[float]) -> tuple:
    """Replace the bucket fractions in ``proto`` (in place); returns the old and the new ones (lists)."""
    node = bucket_constant(proto)
    old, new = numpy_helper.to_array(node.attribute[0].t).tolist(), check_fractions(fractions)
    node.attribute[0].t.CopyFrom(numpy_helper.from_array(new, node.attribute[0].t.name))
    return old, new.tolist()


def convert_file(src: str, dst: str, tile_buckets: Sequence[float]) -> str:
    """Write ``src`` with new buckets to ``dst`` (may be the same path) once ONNX Runtime gives the same outputs
    other than ``macs`` at :data:`CHECK_KNOBS` (ValueError, nothing written, otherwise); returns the line to print."""
    proto = onnx.load(str(src))
    size = tuple(read_metadata(proto)['input_size'])
    before = [random_image_outputs(proto, size, knob) for knob in CHECK_KNOBS]
    old, new_buckets = set_tile_buckets(proto, tile_buckets)
    for knob, ref in zip(CHECK_KNOBS, before):
        new = random_image_outputs(proto, size, knob)
        changed = [name for name in ref if name != 'macs' and not np.array_equal(ref[name], new[name])]
        if changed:
            raise ValueError(f'outputs {changed} changed at knob {knob}')
    onnx.save_model(proto, str(dst), save_as_external_data=False)
    return (f'wrote {dst}: tile buckets {[round(v, 4) for v in old]} -> {[round(v, 4) for v in new_buckets]}; '
            f'outputs other than macs unchanged at knob {", ".join(f"{k:g}" for k in CHECK_KNOBS)}')


def main(argv: Sequence[str] | None = None) -> int:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument('--tile-buckets', type=float, nargs='+', required=True, metavar='FRACTION',
                            help='fractions of all tiles the refined count is rounded up to, ending with 1.0')
    return file_tool(argv, 'seg_perception.offline.deploy.tile_buckets', __doc__,
                     'an exported adaptive TopFormer .onnx (exported with --tile-buckets)', convert_file,
                     add_arguments)


if __name__ == '__main__':
    sys.exit(main())
