"""ONNX graph and metadata helpers shared by export and quantization.

Owns: reading and writing seg_perception's ``metadata_props`` on an ONNX ModelProto (the schema itself is
``runtime.metadata``), finding the 1/8 logits tensor and the post-processing tail (final Resize -> labels /
confidence) of an exported graph, and the command line of the file-to-file graph tools (``file_tool``).
Imports onnx and ``runtime`` (metadata, the model file check) only.
"""
import argparse
import os
from collections.abc import Callable, Iterable, MutableSequence, Sequence

import onnx
from google.protobuf.message import DecodeError

from ...errors import UserError
from ...runtime import metadata as md
from ...runtime.model_file import ModelFileError, check_model_file

OUTPUTS = ('labels', 'confidence')


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """The ModelProto of an ONNX file, the path checked first as the engine checks it (``runtime.model_file``); a
    file that is not an ONNX model is a UserError naming it."""
    try:
        check_model_file(path)
        return onnx.load(str(path))
    except ModelFileError as exc:
        raise UserError(str(exc)) from None
    except DecodeError as exc:
        raise UserError(f'cannot load model {path}: {exc}') from None


def read_metadata(onnx_model: str | os.PathLike | onnx.ModelProto) -> dict:
    """Decoded seg_perception metadata of an ONNX file path or ModelProto."""
    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model),
                                                                                  load_external_data=False)
    source = 'model' if isinstance(onnx_model, onnx.ModelProto) else str(onnx_model)
    return md.decode({p.key: p.value for p in proto.metadata_props}, source=source)


def set_metadata(proto: onnx.ModelProto, meta: dict) -> None:
    """Replace ``proto``'s metadata_props with the encoded ``meta``."""
    del proto.metadata_props[:]
    for key, value in md.encode(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def replace_field(field: MutableSequence, items: Iterable) -> None:
    """Make the repeated protobuf ``field`` (``graph.node``, ``.initializer``, ``.output``) hold ``items``."""
    items = list(items)
    del field[:]
    field.extend(items)


def random_image_outputs(proto: onnx.ModelProto, size: tuple, knob: float = 0.5) -> dict:
    """ONNX Runtime's outputs of ``proto`` (name -> array) for one random image of ``size`` (H, W, seed 0); other
    inputs (a token-pass or refine knob) at ``knob``."""
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(0)
    feeds = {i.name: (rng.standard_normal((1, 3, *size)).astype(np.float32) if i.name == 'images'
                      else np.asarray(knob, np.float32)) for i in session.get_inputs()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def tensor_producers(graph: onnx.GraphProto) -> dict:
    """Tensor name -> the node that outputs it."""
    return {out: node for node in graph.node for out in node.output}


def logits_tensor_name(proto: onnx.ModelProto) -> str:
    """Name of the 1/8 logits tensor: the data input of the Resize that ``confidence`` is computed from."""
    producers = tensor_producers(proto.graph)
    node = producers.get('confidence')
    while node is not None and node.op_type != 'Resize':
        node = producers.get(node.input[0])
    if node is None:
        raise ValueError('no Resize found upstream of the "confidence" output')
    return node.input[0]


def postprocess_node_names(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes between the final Resize and ``labels`` / ``confidence`` (the Resize included),
    found by walking back from the outputs and stopping at Resize."""
    producers = tensor_producers(proto.graph)
    names, stack = set(), [producers[o] for o in OUTPUTS if o in producers]
    while stack:
        node = stack.pop()
        if node.name in names:
            continue
        names.add(node.name)
        if node.op_type != 'Resize':
            stack.extend(producers[i] for i in node.input if i in producers)
    return sorted(names)


def with_logits_output(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` that also outputs its 1/8 logits as ``logits`` (parity checks only)."""
    debug = onnx.ModelProto()
    debug.CopyFrom(proto)
    name = logits_tensor_name(debug)
    debug.graph.node.append(onnx.helper.make_node('Identity', [name], ['logits'], name='parity_logits'))
    debug.graph.output.append(onnx.helper.make_tensor_value_info('logits', onnx.TensorProto.FLOAT, None))
    return debug


def file_tool(argv: Sequence[str] | None, module: str, doc: str, model_help: str, convert: Callable[..., str],
              add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """``python -m MODULE MODEL -o OUTPUT``: ``convert(model, output, **options)`` returns the line to print
    (``options``: the arguments ``add_arguments(parser)`` adds, if given); a file that is missing, not ONNX or not
    convertible (ValueError) prints one ``error:`` line and gives exit code 2."""
    parser = argparse.ArgumentParser(prog=f'python -m {module}', description=doc.splitlines()[0])
    parser.add_argument('model', help=model_help)
    parser.add_argument('-o', '--output', required=True, help='the file to write (may be the input)')
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ('model', 'output')}
    try:
        print(convert(args.model, args.output, **options))
    except (ValueError, OSError, DecodeError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        print(f'error: {args.model}: {exc}')
        return 2
    return 0
