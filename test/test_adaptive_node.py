"""The node with an adaptive TopFormer model: refine_threshold is a live parameter and diagnostics report the
fraction of tiles / frames refined and the MACs per frame (real rclpy + DDS, real ONNX Runtime)."""
import pytest
import torch
from rclpy.parameter import Parameter
from test_node import _rgb, ros  # noqa: F401  (the node + harness fixture)

from seg_perception.nets import create_model

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def adaptive_model(tmp_path_factory):
    from seg_perception.offline.deploy.export import build_metadata, export_model

    torch.manual_seed(0)
    model = create_model('adaptive_topformer_tiny', num_classes=6).eval()
    path = tmp_path_factory.mktemp('adaptive_node') / 'adaptive.onnx'
    export_model(model, path, build_metadata(6, (128, 192), arch='adaptive_topformer_tiny', resize_mode='resize'),
                 (128, 192), check=False)
    return str(path)


def test_refine_threshold_is_live_and_reported(ros, adaptive_model):  # noqa: F811
    node, h = ros(model_path=adaptive_model, diagnostics_period=0.2, refine_threshold=0.0)
    assert not node.set_parameters([Parameter('refine_threshold', value=1.5)])[0].successful
    frame = _rgb(120, 160, seed=3)
    h.publish(frame, 'rgb8')
    assert h.wait_for(lambda: node.frame_counts()['processed'] == 1)
    assert node.set_parameters([Parameter('refine_threshold', value=1.0)])[0].successful
    h.publish(frame, 'rgb8')
    assert h.wait_for(lambda: node.frame_counts()['processed'] == 2)

    def reported():
        for m in reversed(h.received['diagnostics']):
            for s in m.status:
                values = {kv.key: kv.value for kv in s.values}
                if 'refined_tiles_fraction_mean' in values and values['frames_processed'] == '2':
                    return values
        return None
    assert h.wait_for(lambda: reported() is not None, timeout=5)
    d = reported()
    assert d['refined_tiles_fraction_mean'] == '0.500' and d['refined_frames_fraction'] == '0.500'
    assert float(d['gmacs_cheap_path']) < float(d['gmacs_per_frame_mean']) < float(d['gmacs_static_model'])
