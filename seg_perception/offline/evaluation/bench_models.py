"""The models the benchmarks run, prepared without the deployment package (evaluation never imports it).

* a model file as it is (``model_bytes``), and its official-style twin (``labels_bytes``: the 1/8 logits upsampled
  bilinearly to the input size inside the graph, then argmax and max softmax, appended by graph surgery);
* zoo architectures with seed-0 random weights (latency does not depend on the weights), exported with a plain
  ``torch.onnx.export`` (TorchScript exporter, dynamic H/W, opset 17) twice, ending at the 1/8 logits and with the
  official-style tail, and quantized to static QDQ int8 with ONNX Runtime (per-channel int8 weights, uint8
  activations, MinMax on sample-bag frames: the settings of ``seg-perception export --int8``); all cached under
  ``CACHE`` (``~/.cache/seg_perception/bench`` or ``$SEG_PERCEPTION_BENCH_CACHE``).
"""
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UserError
from ...runtime import metadata as md

if TYPE_CHECKING:
    import onnx
    import torch

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / 'models' / 'topformer_tiny_scenes.onnx'   # the 6-class scene model: it has an int8 twin
SAMPLE_BAG = REPO / 'samples' / 'scenes_sample'
CACHE = Path(os.environ.get('SEG_PERCEPTION_BENCH_CACHE', Path.home() / '.cache' / 'seg_perception' / 'bench'))
OPSET = 17


def read_meta(model: 'str | os.PathLike | onnx.ModelProto') -> dict:
    """Decoded seg_perception metadata of an ONNX path or ModelProto."""
    import onnx

    from ..graph.onnx_graph import load_onnx
    if isinstance(model, onnx.ModelProto):
        proto, source = model, 'model'
    else:
        proto, source = load_onnx(model), str(model)
    return md.decode({p.key: p.value for p in proto.metadata_props}, source=source)


def _set_meta(proto, meta):
    del proto.metadata_props[:]
    for key, value in md.encode(meta).items():
        proto.metadata_props.add(key=key, value=value)


def spread(items: list, count: int) -> list:
    """At most ``count`` of ``items``, evenly spaced from the first."""
    return items[::max(1, len(items) // count)][:count]


def sample_frames(count: int = 8) -> list:
    """``count`` RGB frames spread over the shipped sample bag (640x480)."""
    from ..data.bags import TOPICS, iter_bag_pairs
    return spread([image for _, image, _ in iter_bag_pairs(str(SAMPLE_BAG), TOPICS['image'][0],
                                                           TOPICS['labels'][0])], count)


def with_labels_head(proto: 'onnx.ModelProto') -> 'onnx.ModelProto':
    """A copy of a ``logits`` model (ONNX ModelProto) with the official-style tail appended: bilinear Resize of
    the logits to the input size (half-pixel), ``labels`` = argmax, ``confidence`` = 1 / sum exp(l - max l); the
    graph ``seg-perception export`` writes for ``output_kind: labels``."""
    import onnx
    from onnx import TensorProto, helper
    meta = read_meta(proto)
    if meta['output_kind'] != 'logits':
        raise ValueError('the model does not output logits')
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    extra = [o for o in graph.output if o.name != 'logits']
    graph.initializer.extend([onnx.numpy_helper.from_array(np.array([v], np.int64), name) for name, v in
                              (('tail_zero', 0), ('tail_axis', 1), ('tail_hw_start', 2), ('tail_hw_end', 4))])
    nodes = [
        helper.make_node('Shape', ['images'], ['tail_shape']),
        helper.make_node('Shape', ['logits'], ['tail_logits_shape']),
        helper.make_node('Slice', ['tail_logits_shape', 'tail_zero', 'tail_hw_start'], ['tail_nc']),
        helper.make_node('Slice', ['tail_shape', 'tail_hw_start', 'tail_hw_end'], ['tail_hw']),
        helper.make_node('Concat', ['tail_nc', 'tail_hw'], ['tail_sizes'], axis=0),
        helper.make_node('Resize', ['logits', '', '', 'tail_sizes'], ['tail_up'], mode='linear',
                         coordinate_transformation_mode='half_pixel'),
        helper.make_node('ReduceMax', ['tail_up', 'tail_axis'], ['tail_top'], keepdims=1),
        helper.make_node('ArgMax', ['tail_up'], ['labels'], axis=1, keepdims=0),
        helper.make_node('Sub', ['tail_up', 'tail_top'], ['tail_centred']),
        helper.make_node('Exp', ['tail_centred'], ['tail_exp']),
        helper.make_node('ReduceSum', ['tail_exp', 'tail_axis'], ['tail_sum'], keepdims=0),
        helper.make_node('Reciprocal', ['tail_sum'], ['confidence']),
    ]
    opset = next(o.version for o in out.opset_import if o.domain in ('', 'ai.onnx'))
    if opset < 13:
        raise ValueError(f'opset {opset} is too old for the labels tail (needs >= 13)')
    if opset < 18:   # ReduceMax takes its axes as an attribute before opset 18
        nodes[6].ClearField('input')
        nodes[6].input.append('tail_up')
        nodes[6].attribute.append(helper.make_attribute('axes', [1]))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info('labels', TensorProto.INT64, [1, None, None]),
                         helper.make_tensor_value_info('confidence', TensorProto.FLOAT, [1, None, None]), *extra])
    _set_meta(out, dict(meta, output_kind='labels'))
    onnx.checker.check_model(out)
    return out




class BenchModel:
    """One model under test: a PyTorch module of its architecture, its ONNX graph (bytes), optionally an int8
    graph, where the graph ends (``head``: 'logits', or 'labels' for a file with the in-graph tail) and, for a
    model file, a plain ``torch.onnx.export`` of its architecture (``plain``: what the file is measured against;
    ``export`` rewrites the network's Resize nodes, ``graph.resize_matmul``)."""

    def __init__(self, name: str, torch_model, fp32: bytes, int8: bytes = None, head: str = 'logits',
                 plain: bytes = None):
        self.name, self.torch_model, self.fp32, self.int8, self.head = name, torch_model, fp32, int8, head
        self.plain = plain


def labels_bytes(path: str | os.PathLike) -> bytes:
    """The official-style version of a model file (unchanged if it already has the labels tail)."""
    import onnx
    proto = onnx.load(str(path))
    return (with_labels_head(proto) if read_meta(proto)['output_kind'] == 'logits' else proto).SerializeToString()


class _OfficialTail:
    """The official-style export of a 1/8-logits model: upsample to the input size, argmax, max softmax."""

    def __new__(cls, model):
        import torch

        from ..predict import labels_head

        class Tail(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return labels_head(self.model(images), images.shape[-2:])
        return Tail()


def export_plain(model: 'torch.nn.Module', path: Path, num_classes: int, arch: str, head: str = 'logits') -> Path:
    """A plain ``torch.onnx.export`` of ``model`` (``head='logits'``) or of it with the official-style tail
    (``'labels'``), with seg_perception metadata so the engine and ``read_meta`` accept it."""
    import io
    import warnings

    import onnx
    import torch
    wrapper = model if head == 'logits' else _OfficialTail(model)
    outputs = ['logits'] if head == 'logits' else ['labels', 'confidence']
    axes = {'images': {2: 'h', 3: 'w'}, **{o: {1: 'h', 2: 'w'} for o in outputs if o != 'logits'}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        torch.onnx.export(wrapper.eval(), (torch.zeros(1, 3, 256, 320),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=['images'], output_names=outputs, dynamic_axes=axes)
    proto = onnx.load_from_string(buffer.getvalue())
    _set_meta(proto, {'names': [f'class_{i}' for i in range(num_classes)], 'palette': [[0, 0, 0]] * num_classes,
                      'mean': md.IMAGENET_MEAN, 'std': md.IMAGENET_STD, 'input_size': [256, 320],
                      'resize_mode': 'resize', 'output_kind': head, 'dynamic_hw': True, 'stride': 32, 'arch': arch})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return path


def quantize_int8(fp32_path: Path, int8_path: Path, images: list, size: tuple[int, int] = (256, 320)) -> Path:
    """Static QDQ int8 of a logits graph (ONNX Runtime ``quantize_static``, per-channel int8 weights, uint8
    activations, MinMax), calibrated on ``images`` resized to ``size`` and normalised as the engine does."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ...runtime.engine import compute_geometry, preprocess
    feeds = iter([{'images': preprocess(rgb, compute_geometry(rgb.shape[:2], size, 'resize'), md.IMAGENET_MEAN,
                                        md.IMAGENET_STD)} for rgb in images])

    class Reader:
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, 'pre.onnx')
        quant_pre_process(str(fp32_path), pre, skip_symbolic_shape=False)
        quantize_static(pre, str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={'CalibTensorRangeSymmetric': False})
    return int8_path


def zoo_files(arch: str, num_classes: int, int8: bool) -> tuple:
    """(PyTorch model, fp32 logits .onnx, int8 .onnx or None, official-style .onnx) of a zoo model with seed-0
    random weights; the files are cached."""
    import torch

    from ...nets import create_model
    torch.manual_seed(0)
    model = create_model(arch, num_classes=num_classes).eval()
    stem = CACHE / f'{arch}_{num_classes}_torch{torch.__version__.split("+")[0]}'
    fp32, labels, q = (Path(f'{stem}_{kind}.onnx') for kind in ('logits', 'labels', 'logits_int8'))
    if not fp32.exists():
        export_plain(model, fp32, num_classes, arch)
    if not labels.exists():
        export_plain(model, labels, num_classes, arch, head='labels')
    if int8 and not q.exists():
        quantize_int8(fp32, q, sample_frames())
    return model, fp32, (q if int8 else None), labels


def _refuse_adaptive(arch: str, spec: str) -> None:
    """A model whose cost depends on the frame (a run-time knob input) has its own benchmarks."""
    for family in ('tokenpass', 'adaptive'):
        if arch.startswith(family):
            raise UserError(f'model {spec!r}: its cost depends on the frame; use `seg-perception bench {family}`')


def load_bench_model(spec: str, int8: bool = True) -> BenchModel:
    """A model file (``.onnx``; its ``_int8`` twin when there is one) or a zoo ``arch[:classes]`` name."""
    import torch

    from ...nets import create_model, list_models
    if spec.endswith('.onnx'):
        if not os.path.isfile(spec):
            raise UserError(f'model {spec}: no such file')
        meta = read_meta(spec)
        arch, num_classes = meta.get('arch'), len(meta['names'])
        if arch not in list_models():
            raise UserError(f'{spec}: its metadata arch {arch!r} is not in the zoo, PyTorch cannot run it')
        _refuse_adaptive(arch, spec)
        torch.manual_seed(0)
        model = create_model(arch, num_classes=num_classes).eval()
        twin = Path(spec[:-len('.onnx')] + '_int8.onnx')
        name = Path(spec).stem + ('' if meta['output_kind'] == 'logits' else ' (labels head)')
        plain = zoo_files(arch, num_classes, int8=False)[1] if meta['output_kind'] == 'logits' else None
        return BenchModel(name, model, Path(spec).read_bytes(), twin.read_bytes() if int8 and twin.exists() else None,
                          meta['output_kind'], plain.read_bytes() if plain else None)
    arch, _, classes = spec.partition(':')
    if arch not in list_models():
        raise UserError(f'model {spec!r}: neither an .onnx file nor one of {", ".join(list_models())}')
    _refuse_adaptive(arch, spec)
    if classes and not (classes.isdigit() and int(classes) > 0):
        raise UserError(f'model {spec!r}: the class count after ":" must be a positive integer')
    num_classes = int(classes) if classes else (19 if arch.startswith('rtformer') else 150)
    model, fp32, q, _ = zoo_files(arch, num_classes, int8)
    return BenchModel(f'{arch} ({num_classes} cl.)', model, fp32.read_bytes(), q.read_bytes() if q else None)
