"""Class metadata in ROS 2's standard message, vision_msgs/LabelInfo, and in the richer JSON of our own.

``vision_msgs/LabelInfo`` (what Nav2's semantic segmentation layer and other vision_msgs users read): class_map =
the model's class ids and names, threshold = the node's confidence threshold. vision_msgs has no PyPI wheel: it
comes from a ROS install (``ros-<distro>-vision-msgs``) or a venv built by ``shared/ros2cli/make_env.sh``; without
it ``LabelInfo`` is None and the node says once that it does not publish the message.
The node's JSON class list (``std_msgs/String``, ``SegmentationPipeline.label_info``) stays on its own topic: it
carries what LabelInfo cannot (palette, label image encoding, ignore index, model file and architecture).
"""
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from std_msgs.msg import Header

try:
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

UINT16_MAX = 65535


def make_label_info(names: Sequence[str], threshold: float, header: 'Header | None' = None) -> 'LabelInfo':
    """vision_msgs/LabelInfo with class ids 0..N-1 named by ``names`` and the given confidence threshold."""
    if LabelInfo is None:
        raise RuntimeError('vision_msgs is not installed')
    if len(names) > UINT16_MAX:
        raise ValueError(f'{len(names)} classes do not fit the uint16 class ids of LabelInfo')
    msg = LabelInfo(class_map=[VisionClass(class_id=i, class_name=str(n)) for i, n in enumerate(names)],
                    threshold=float(min(max(threshold, 0.0), 1.0)))
    if header is not None:
        msg.header = header
    return msg

