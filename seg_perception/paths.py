"""Where the installed package keeps its shared files (models, config), in a ROS install or a pip install."""
import os
import sys

PACKAGE = 'seg_perception'
DEFAULT_MODEL = 'topformer_tiny_scenes_cover.onnx'


def share_dirs() -> list[str]:
    """Candidate share/seg_perception folders, most specific first."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory
        dirs.append(get_package_share_directory(PACKAGE))
    except (ImportError, LookupError, OSError):  # no ament index, package not in it, AMENT_PREFIX_PATH unset
        pass
    dirs.append(os.path.join(sys.prefix, 'share', PACKAGE))
    dirs.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout
    return dirs


def find_share_file(*parts: str) -> str | None:
    """First existing share/seg_perception/<parts>, or the source checkout's; None if nowhere."""
    for d in share_dirs():
        path = os.path.join(d, *parts)
        if os.path.exists(path):
            return path
    return None


def default_model_path() -> str:
    """The shipped default model: installed, in a source checkout, else models/ relative to the working folder."""
    return find_share_file('models', DEFAULT_MODEL) or os.path.join('models', DEFAULT_MODEL)
