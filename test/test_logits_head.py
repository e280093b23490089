"""Graph surgery between the two output conventions: a labels model converted to a logits model keeps its
weights and logits bit for bit; the official-style tail put back gives the original labels; export --head logits."""
import numpy as np
import onnx
import onnxruntime as ort

from seg_perception.offline import cli
from seg_perception.offline.deploy.logits_head import convert_file, to_logits_model
from seg_perception.offline.deploy.onnx_graph import read_metadata, with_logits_output
from seg_perception.offline.evaluation.bench_models import with_labels_head
from seg_perception.runtime.engine import SegmentationEngine


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
    from seg_perception.offline.deploy.logits_head import main
    assert main([tiny_logits_model, '-o', str(tmp_path / 'x.onnx')]) == 2
    assert 'already outputs logits' in capsys.readouterr().out


def test_export_head_logits(tmp_path):
    out = tmp_path / 'm.onnx'
    assert cli.main(['export', '--arch', 'topformer_tiny', '--num-classes', '6', '--input-size', '64', '96',
                     '--resize-mode', 'resize', '--head', 'logits', '-o', str(out)]) == 0
    engine = SegmentationEngine(str(out))
    assert engine.meta['output_kind'] == 'logits'
    result = engine.infer(np.zeros((120, 160, 3), np.uint8))
    assert result.labels.shape == (120, 160) and result.logits.shape == (6, 8, 12)
