"""Graph surgery between the two output conventions: a labels model converted to a logits model keeps its
weights and logits bit for bit; the official-style tail put back gives the original labels; export --head logits;
per-pixel (nhwc) logits give the engine the same results."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from seg_perception.offline import cli
from seg_perception.offline.evaluation.bench_models import with_labels_head
from seg_perception.offline.graph.logits_head import convert_file, to_logits_model
from seg_perception.offline.graph.onnx_graph import read_metadata, set_metadata, with_logits_output
from seg_perception.runtime.engine import EngineError, SegmentationEngine


def _run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=['CPUExecutionProvider'])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {'images': x})))


def test_labels_model_to_logits_and_back(tiny_model, tmp_path):
    labels_proto = onnx.load(tiny_model)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    original = _run(with_logits_output(labels_proto), x)
    logits_proto = to_logits_model(labels_proto)
    assert [o.name for o in logits_proto.graph.output] == ['logits']
    assert read_metadata(logits_proto)['output_kind'] == 'logits'
    assert np.array_equal(_run(logits_proto, x)['logits'], original['logits'])
    back = _run(with_labels_head(logits_proto), x)
    assert np.array_equal(back['labels'], original['labels'])
    assert np.allclose(back['confidence'], original['confidence'], atol=1e-6)
    out = tmp_path / 'logits.onnx'
    report = convert_file(tiny_model, str(out))
    assert report['removed_nodes'] > 0
    rgb = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    result = SegmentationEngine(str(out)).infer(rgb)
    assert result.labels.shape == (48, 80) and result.logits is not None


def test_convert_refuses_a_logits_model(tiny_logits_model, tmp_path, capsys):
    from seg_perception.offline.graph.logits_head import main
    assert main([tiny_logits_model, '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'already outputs logits' in capsys.readouterr().out


@pytest.mark.parametrize('classes, layout', [(6, 'nchw'), (12, 'nhwc')])
def test_export_head_logits(tmp_path, classes, layout):
    """``--logits-layout auto``: per-pixel rows above 8 classes, where the upsampler reads rows."""
    out = tmp_path / 'm.onnx'
    assert cli.main(['export', '--arch', 'topformer_tiny', '--num-classes', str(classes), '--input-size', '64', '96',
                     '--resize-mode', 'resize', '--head', 'logits', '-o', str(out)]) == 0
    engine = SegmentationEngine(str(out))
    assert engine.meta['output_kind'] == 'logits' and engine.meta.get('logits_layout', 'nchw') == layout
    result = engine.infer(np.zeros((120, 160, 3), np.uint8))
    assert result.labels.shape == (120, 160) and result.logits.shape == (classes, 8, 12)
    # one and two intra-op threads: the same results
    rgb = np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    one, two = (SegmentationEngine(str(out), intra_op_threads=n).infer(rgb) for n in (1, 2))
    assert np.array_equal(one.labels, two.labels) and np.array_equal(one.confidence, two.confidence)


def test_per_pixel_logits_give_the_engine_the_same_results(tiny_model, tiny_logits_model, tmp_path, capsys):
    """``--layout nhwc`` from a labels model and from an (N, C, h, w) logits model: (N, h, w, C) logits, equal
    to the transposed ones, and the engine's labels, confidence and logits equal the nchw file's; a second
    conversion and an unknown layout in the metadata are refused, naming them."""
    from seg_perception.offline.graph.logits_head import main
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    rgb = np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    for source in (tiny_model, tiny_logits_model):
        nchw = onnx.load(source) if source == tiny_logits_model else to_logits_model(onnx.load(source))
        nhwc = to_logits_model(onnx.load(source), 'nhwc')
        assert read_metadata(nhwc)['logits_layout'] == 'nhwc'
        assert np.array_equal(_run(nhwc, x)['logits'], _run(nchw, x)['logits'].transpose(0, 2, 3, 1))
        paths = tmp_path / 'nchw.onnx', tmp_path / 'nhwc.onnx'
        for proto, path in zip((nchw, nhwc), paths):
            onnx.save(proto, str(path))
        a, b = (SegmentationEngine(str(p)).infer(rgb) for p in paths)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)
        assert np.array_equal(a.logits, b.logits)
    assert main([str(paths[1]), '-o', str(tmp_path / 'again.onnx'), '--layout', 'nhwc']) == 2
    assert 'already outputs logits per pixel' in capsys.readouterr().out
    set_metadata(nhwc, dict(read_metadata(nhwc), logits_layout='nwhc'))
    onnx.save(nhwc, str(paths[1]))
    with pytest.raises(EngineError, match="logits_layout 'nwhc'"):
        SegmentationEngine(str(paths[1]))
