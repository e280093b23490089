"""Unlabelled images from whatever a user points at: what ``render`` writes (with or without split subfolders),
a plain folder of images, a dataset folder or dataset YAML (any layout ``open_dataset`` reads) or a rosbag2.

Used by every option that takes images without labels (``export --int8 --calib``)."""
import os
from pathlib import Path

import cv2
import numpy as np

from ...errors import UserError
from .datasets import IMAGE_SUFFIXES, detect_layout, is_bag, open_dataset, read_rgb

DEFAULT_TOPIC = '/camera/image_raw'


def evenly_spaced(n: int, count: int) -> list:
    """``count`` indices spread over ``range(n)`` (all of them when count <= 0 or >= n)."""
    if count <= 0 or count >= n:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, count)})


def _image_files(folder: Path, recursive: bool) -> list:
    pattern = folder.rglob('*') if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _bag_images(path: Path, topic: str, count: int) -> list:
    from .bags import _connections, _open_reader, decode, read_raw_messages
    reader = _open_reader(path)
    try:
        _connections(reader, topic)  # an absent topic names the bag's topics, one of another type its type
    finally:
        reader.close()
    total = sum(1 for _ in read_raw_messages(str(path), [topic]))
    wanted = set(evenly_spaced(total, count))
    images = []
    for i, (_, msgtype, raw, _) in enumerate(read_raw_messages(str(path), [topic])):
        if i in wanted:
            image = decode(raw, msgtype)[2]
            images.append(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image)
    return images


def load_images(spec: str | os.PathLike, count: int = 0, topic: str = DEFAULT_TOPIC, split: str | None = None) -> list:
    """``count`` (0 = all) RGB uint8 images spread evenly over ``spec``:

    * a rosbag2 folder (or its .mcap/.db3 file): the messages of ``topic`` (Image or CompressedImage);
    * a dataset YAML: the images of its dataset (``split`` or the YAML's);
    * a folder with ``images/`` (what ``render`` writes): ``images/SPLIT/`` when ``split`` is given, else every
      image below ``images/`` (all splits);
    * a folder of image files;
    * any other dataset folder ``open_dataset`` reads (CamVid, Cityscapes, ADE20K): its ``split`` images.

    A path that does not exist, an absent topic or a source without images is a :class:`UserError`."""
    path = Path(spec)
    if not path.exists():
        raise UserError(f'{path}: not found (give a folder of images, a dataset folder or YAML, or a rosbag2)')
    if is_bag(path):
        images = _bag_images(path if path.is_dir() else path.parent, topic, count)
    elif path.is_file():
        if path.suffix not in ('.yaml', '.yml'):
            raise UserError(f'{path}: not a folder of images, a dataset YAML or a rosbag2')
        dataset = open_dataset(path, split=split)
        images = [dataset[i][0] for i in evenly_spaced(len(dataset), count)]
    elif (path / 'images').is_dir():
        base = path / 'images' / split if split else path / 'images'
        if not base.is_dir():
            raise UserError(f'{path}: no images/{split}/ folder (splits: '
                            f'{", ".join(sorted(p.name for p in (path / "images").iterdir() if p.is_dir()))})')
        files = _image_files(base, recursive=True)
        images = [read_rgb(files[i]) for i in evenly_spaced(len(files), count)]
    elif _image_files(path, recursive=False):
        files = _image_files(path, recursive=False)
        images = [read_rgb(files[i]) for i in evenly_spaced(len(files), count)]
    else:
        detect_layout(path)  # not a dataset either: says what it expected
        dataset = open_dataset(path, split=split)
        images = [dataset[i][0] for i in evenly_spaced(len(dataset), count)]
    if not images:
        raise UserError(f'{path}: no images found' + (f' on {topic}' if is_bag(path) else ''))
    return images
