"""Engine tests on real ONNX Runtime sessions: sizes, letterbox/resize geometry, metadata, bad input."""
import numpy as np
import onnx
import pytest
from onnx_models import make_tiny_model

from seg_perception.runtime import engine as eng
from seg_perception.runtime.engine import EngineError, SegmentationEngine


@pytest.mark.parametrize('hw', [(1, 1), (7, 3), (37, 53), (480, 640), (721, 1281), (64, 64)])
def test_any_size_in_original_size_out(tiny_model, hw):
    e = SegmentationEngine(tiny_model, intra_op_threads=1)
    rgb = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    r = e.infer(rgb)
    assert r.labels.shape == hw and r.labels.dtype == np.uint8
    assert r.confidence.shape == hw and r.confidence.dtype == np.float32
    assert r.labels.max() < 6
    assert 0 < r.confidence.min() and r.confidence.max() <= 1.0 + 1e-6
    assert r.kept_fraction is None and r.macs is None


def test_grey_input_accepted(tiny_model):
    r = SegmentationEngine(tiny_model).infer(np.full((20, 30), 128, np.uint8))
    assert r.labels.shape == (20, 30)


def test_uniform_image_gives_uniform_labels_after_letterbox(tiny_logits_model):
    """Letterbox padding must not leak into the output: a uniform image is one class everywhere."""
    e = SegmentationEngine(tiny_logits_model)
    assert e.meta['resize_mode'] == 'letterbox' and e.net_hw == (64, 96)
    # tall image: content 64x48 at x offset 24 (a multiple of the model's 8x8 pooling), padding either side
    r = e.infer(np.full((128, 96, 3), (200, 30, 40), np.uint8))
    assert r.labels.shape == (128, 96)
    inner = r.labels[:, 8:-8]   # bilinear upsampling of 1/8 logits blends the content edge with the padding
    assert np.unique(inner).size == 1
    assert (r.labels == inner[0, 0]).mean() > 0.8


def test_letterbox_geometry_round_trip():
    g = eng.compute_geometry((480, 640), (256, 256), 'letterbox')
    assert g.content_hw == (192, 256) and g.offset_yx == (32, 0)
    marker = np.zeros((256, 256), np.uint8)
    marker[32:32 + 192, :] = 1
    back = eng.restore(marker, g, 0)
    assert back.shape == (480, 640) and back.min() == 1
    g = eng.compute_geometry((100, 70), None, 'resize', stride=32, dynamic=True)
    assert g.net_hw == (128, 96) and g.content_hw == (100, 70)


def test_preprocess_normalises_and_pads_with_zero():
    g = eng.compute_geometry((2, 4), (4, 4), 'letterbox')
    blob = eng.preprocess(np.full((2, 4, 3), 10, np.uint8), g, mean=[10, 10, 10], std=[2, 2, 2])
    assert blob.shape == (1, 3, 4, 4)
    assert np.all(blob == 0)
    blob = eng.preprocess(np.full((2, 4, 3), 14, np.uint8), g, mean=[10, 10, 10], std=[2, 2, 2])
    assert np.allclose(blob[0, :, 1:3], 2.0) and np.all(blob[0, :, 0] == 0) and np.all(blob[0, :, 3] == 0)


def test_preprocess_opencv_and_numpy_paths_agree(monkeypatch):
    """OpenCV 4.8+ normalises with its blob maker, older OpenCV (apt on Humble) with numpy: the same blob."""
    import cv2
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    g = eng.compute_geometry((48, 80), (64, 64), 'letterbox')
    fast = eng.preprocess(rgb, g, mean, std)
    if hasattr(cv2.dnn, 'blobFromImageWithParams'):
        monkeypatch.delattr(cv2.dnn, 'blobFromImageWithParams')
    plain = eng.preprocess(rgb, g, mean, std)
    assert fast.shape == plain.shape == (1, 3, 64, 64) and fast.dtype == plain.dtype == np.float32
    assert np.array_equal(fast, plain)
    oy, ox = g.offset_yx
    assert oy > 0 and np.all(plain[0, :, :oy] == 0) and np.all(plain[0, :, -oy:] == 0)
    assert np.all(plain[0, :, oy:-oy].std(axis=(1, 2)) > 0.5)   # the content is the image, normalised


def test_gray_world_white_balance_folds_into_the_normalisation():
    """Gray world scales each channel to the channels' common mean (gains within [0.5, 2], none for a black
    frame); folded into mean/std it gives the blob of the balanced image, the letterbox padding still 0, and the
    trainer's ``normalize`` makes the same values."""
    from seg_perception.offline.predict import normalize
    rng = np.random.default_rng(3)
    rgb = np.clip(rng.integers(40, 200, (48, 80, 3)) * [1.3, 1.0, 0.7], 0, 255).astype(np.uint8)   # a warm cast
    gains = eng.gray_world_gains(rgb)
    balanced = rgb * gains
    assert np.allclose(balanced.reshape(-1, 3).mean(0), rgb.mean(), rtol=1e-9) and gains[0] < 1 < gains[2]
    assert np.array_equal(eng.gray_world_gains(np.zeros((4, 4, 3), np.uint8)), np.ones(3))
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    assert np.array_equal(eng.gray_world_gains(red), [0.5, 2.0, 2.0])
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    g = eng.compute_geometry((48, 80), (64, 80), 'letterbox')
    blob = eng.preprocess(rgb, g, mean, std, 'gray_world')
    oy = g.offset_yx[0]
    expected = ((balanced - mean) / std).transpose(2, 0, 1)
    assert np.allclose(blob[0, :, oy:oy + 48], expected, atol=1e-4)
    assert np.all(blob[0, :, :oy] == 0) and np.all(blob[0, :, oy + 48:] == 0)
    assert not np.allclose(eng.preprocess(rgb, g, mean, std)[0, :, oy:oy + 48], expected, atol=0.05)
    assert np.allclose(normalize(rgb, mean, std, 'gray_world').numpy(), expected, atol=1e-4)


def test_logits_model_matches_labels_model(tmp_path):
    """The two output conventions give the same labels for the same weights (engine upsampling vs graph)."""
    a = SegmentationEngine(make_tiny_model(str(tmp_path / 'a.onnx'), output_kind='labels', dynamic=True))
    b = SegmentationEngine(make_tiny_model(str(tmp_path / 'b.onnx'), output_kind='logits', dynamic=True))
    rgb = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ra, rb = a.infer(rgb), b.infer(rgb)
    assert (ra.labels == rb.labels).mean() > 0.99
    # logits models: the coarse max softmax interpolated (runtime/upsample.py), near that of upsampled logits
    diff = np.abs(ra.confidence - rb.confidence)
    assert diff.mean() < 0.03, diff.mean()


def test_input_size_override_and_native(tiny_model):
    e = SegmentationEngine(tiny_model, input_size=(96, 128))
    assert e.net_hw == (96, 128)
    assert SegmentationEngine(tiny_model, input_size=(0, 0)).net_hw is None
    for bad in ((100, 128), (0, 128), (-32, 64)):
        with pytest.raises(EngineError, match='positive multiples of 32'):
            SegmentationEngine(tiny_model, input_size=bad)


def test_symbolic_input_dims_are_fixed_to_the_size_the_engine_runs(tiny_model):
    """A graph exported with a symbolic height and width runs at the engine's one network size, so the session
    fixes them (ONNX Runtime then folds the shape arithmetic); 'native' input keeps them free. Same labels."""
    import onnxruntime as ort
    rgb = np.random.default_rng(4).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    fixed = SegmentationEngine(tiny_model, input_size=(96, 128))
    assert fixed.session.get_inputs()[0].shape == [1, 3, 96, 128]
    free = SegmentationEngine(tiny_model, input_size=(96, 128))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    free.session = ort.InferenceSession(tiny_model, opts, providers=['CPUExecutionProvider'])
    assert free.session.get_inputs()[0].shape == [1, 3, 'H', 'W']
    a, b = fixed.infer(rgb), free.infer(rgb)
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.confidence, b.confidence, atol=1e-6)
    native = SegmentationEngine(tiny_model, input_size=(0, 0))
    assert native.session.get_inputs()[0].shape == [1, 3, 'H', 'W']
    assert native.infer(rgb).labels.shape == (60, 90)


def test_worker_thread_spinning_is_set_only_when_asked(tiny_model):
    """``spinning`` reaches ONNX Runtime's session options; left at None, ONNX Runtime keeps its own default."""
    def entry(engine):
        try:
            return engine.session.get_session_options().get_session_config_entry('session.intra_op.allow_spinning')
        except RuntimeError:   # not set
            return None
    assert entry(SegmentationEngine(tiny_model, intra_op_threads=2, spinning=False)) == '0'
    assert entry(SegmentationEngine(tiny_model, intra_op_threads=2, spinning=True)) == '1'
    assert entry(SegmentationEngine(tiny_model, intra_op_threads=2)) is None


def test_one_symbolic_name_for_height_and_width_stays_free_at_a_non_square_size(tiny_model, tmp_path):
    import onnx
    model = onnx.load(tiny_model)
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in ('H', 'W'):
                dim.dim_param = 'S'
    onnx.save(model, str(tmp_path / 'square_name.onnx'))
    engine = SegmentationEngine(str(tmp_path / 'square_name.onnx'), input_size=(96, 128))
    assert engine.session.get_inputs()[0].shape == [1, 3, 'S', 'S']
    assert engine.infer(np.zeros((60, 90, 3), np.uint8)).labels.shape == (60, 90)
    square = SegmentationEngine(str(tmp_path / 'square_name.onnx'), input_size=(96, 96))
    assert square.session.get_inputs()[0].shape == [1, 3, 96, 96]


def test_more_than_255_classes_gives_uint16(tmp_path):
    e = SegmentationEngine(make_tiny_model(str(tmp_path / 'm.onnx'), num_classes=300))
    r = e.infer(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert r.labels.dtype == np.uint16 and e.label_dtype == np.uint16


@pytest.mark.parametrize('bad, match', [
    (np.zeros((0, 5, 3), np.uint8), 'empty'),
    (np.zeros((5, 5, 3), np.float32), 'uint8'),
    (np.zeros((5, 5, 2), np.uint8), 'HxWx3'),
    ([[1, 2]], 'numpy'),
    (np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 8000, 3)), 'exceeds'),   # 72 Mpx, no memory used
])
def test_bad_images_are_refused_clearly(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        SegmentationEngine(tiny_model).infer(bad)


def test_missing_broken_and_foreign_models(tmp_path, tiny_model):
    with pytest.raises(EngineError, match='not found'):
        SegmentationEngine(tmp_path / 'nope.onnx')
    junk = tmp_path / 'junk.onnx'
    junk.write_bytes(b'definitely not protobuf' * 10)
    with pytest.raises(EngineError, match='not an ONNX model'):       # refused before any parser sees it
        SegmentationEngine(junk)
    truncated = tmp_path / 'truncated.onnx'
    truncated.write_bytes(open(tiny_model, 'rb').read()[:300])
    with pytest.raises(EngineError, match='cannot load'):             # looks like ONNX, does not parse
        SegmentationEngine(truncated)
    m = onnx.load(tiny_model)
    del m.metadata_props[:]
    plain = tmp_path / 'plain.onnx'
    onnx.save(m, plain)
    with pytest.raises(EngineError, match='not a seg_perception model'):
        SegmentationEngine(plain)
    m = onnx.load(tiny_model)
    for p in m.metadata_props:
        if p.key == 'palette':
            p.value = '[[1, 2, 3]]'
    short = tmp_path / 'short.onnx'
    onnx.save(m, short)
    with pytest.raises(EngineError, match='palette'):
        SegmentationEngine(short)
    m = onnx.load(tiny_model)
    m.metadata_props.add(key='white_balance', value='auto')
    unknown_balance = tmp_path / 'balance.onnx'
    onnx.save(m, unknown_balance)
    with pytest.raises(EngineError, match="white_balance 'auto' not in"):
        SegmentationEngine(unknown_balance)
    assert SegmentationEngine(tiny_model).meta['white_balance'] == 'none'   # files without the key


def test_provider_selection_falls_back_to_cpu():
    assert eng.select_providers(['TensorrtExecutionProvider', 'CUDAExecutionProvider'],
                                available=['CPUExecutionProvider']) == ['CPUExecutionProvider']
    assert eng.select_providers(['CUDAExecutionProvider', 'CPUExecutionProvider'],
                                available=['CUDAExecutionProvider', 'CPUExecutionProvider']) == \
        ['CUDAExecutionProvider', 'CPUExecutionProvider']


def test_colorize_and_overlay():
    labels = np.array([[0, 1], [255, 2]], np.uint8)
    c = eng.colorize(labels, [(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    assert c.shape == (2, 2, 3) and tuple(c[0, 1]) == (40, 50, 60) and tuple(c[1, 0]) == (0, 0, 0)
    assert c.dtype == np.uint8 and c.flags.c_contiguous
    wide = eng.colorize(np.array([[2, 299], [1000, 0]], np.uint16), [(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    assert wide[0, 0].tolist() == [70, 80, 90] and wide[0, 1].tolist() == wide[1, 0].tolist() == [0, 0, 0]
    many = np.random.default_rng(0).integers(0, 256, (48, 64)).astype(np.uint8)   # the uint8 path = the gather
    palette = [tuple(int(v) for v in c) for c in np.random.default_rng(1).integers(0, 256, (200, 3))]
    assert np.array_equal(eng.colorize(many, palette), eng.colorize(many.astype(np.uint16), palette))
    conf = np.array([[0.0, 1.0, 0.2 / 255], [0.7 / 255, 0.31, 0.999]], np.float32)
    assert eng.confidence_to_mono8(conf).tolist() == [[0, 255, 0], [1, 79, 255]]
    o = eng.overlay(np.zeros_like(c), c, 0.5)
    assert abs(int(o[0, 1, 0]) - 20) <= 1
