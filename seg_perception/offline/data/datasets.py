"""Semantic segmentation datasets behind one interface (numpy/cv2 only, no torch).

Every dataset has ``classes`` (names), ``palette`` (RGB per class), ``ignore_index`` (255), ``names`` (one per
sample), ``len(ds)`` and ``ds[i] -> (image, label)``: image HxWx3 uint8 RGB, label HxW uint8 train ids with
``ignore_index`` where the ground truth is void or unlabelled.

Layouts (``open_dataset`` detects them from a folder):

``ade20k``     ``[ADEChallengeData2016/]images/{training,validation}/*.jpg`` + ``annotations/.../*.png``; 0 (other)
               becomes 255 and 1..150 become 0..149 ("reduce_zero_label").
``cityscapes`` ``leftImg8bit/{train,val,test}/CITY/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelTrainIds.png``
               (19 classes, 255 ignore); ``*_gtFine_labelIds.png`` is converted when trainIds are absent.
``camvid``     SegNet layout ``{train,val,test}/`` + ``{train,val,test}annot/``, or ``{split}/images`` +
              ``{split}/labels`` (11 classes; 11 = void -> 255); split ``train+val`` joins splits.
``generic``    ``images/`` + ``masks/`` (same stem, mask .png) + ``classes.yaml`` (``names``, optional ``palette``,
               ``ignore_index``, ``label_map`` raw id -> train id); split subfolders ``images/SPLIT/`` +
               ``masks/SPLIT/`` or ``SPLIT/images`` + ``SPLIT/masks`` are used when present, else a
               ``SPLIT.txt`` list of names, else every image. Colour masks (HxWx3) are mapped through the palette.
               ``seg-perception render --out`` writes this layout.
``rosbag``     :class:`BagDataset`: image/label pairs of a rosbag2 paired by header stamp.
"""
import colorsys
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import yaml

from seg_perception.classes import IGNORE_INDEX, SCENE_CLASS_NAMES, SCENE_PALETTE
from seg_perception.errors import UserError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff', '.webp')  # what cv2.imread reads

ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel',
    'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')

CITYSCAPES_CLASSES = (
    ('road', (128, 64, 128)), ('sidewalk', (244, 35, 232)), ('building', (70, 70, 70)), ('wall', (102, 102, 156)),
    ('fence', (190, 153, 153)), ('pole', (153, 153, 153)), ('traffic light', (250, 170, 30)),
    ('traffic sign', (220, 220, 0)), ('vegetation', (107, 142, 35)), ('terrain', (152, 251, 152)),
    ('sky', (70, 130, 180)), ('person', (220, 20, 60)), ('rider', (255, 0, 0)), ('car', (0, 0, 142)),
    ('truck', (0, 0, 70)), ('bus', (0, 60, 100)), ('train', (0, 80, 100)), ('motorcycle', (0, 0, 230)),
    ('bicycle', (119, 11, 32)))
# Cityscapes labelIds of the 19 train classes, in train-id order.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

CAMVID_CLASSES = (
    ('sky', (128, 128, 128)), ('building', (128, 0, 0)), ('pole', (192, 192, 128)), ('road', (128, 64, 128)),
    ('pavement', (60, 40, 222)), ('tree', (128, 128, 0)), ('sign symbol', (192, 128, 128)), ('fence', (64, 64, 128)),
    ('car', (64, 0, 128)), ('pedestrian', (64, 64, 0)), ('bicyclist', (0, 128, 192)))

ADE20K_SPLITS = {'train': 'training', 'training': 'training', 'val': 'validation', 'validation': 'validation'}


def make_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours (golden-ratio hues, alternating brightness) for classes without a palette."""
    colours = []
    for k in range(n):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.65 + 0.35 * (k % 2), 0.95 - 0.35 * ((k // 2) % 2))
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label file as stored (HxW, or HxWx3 RGB for colour masks)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise FileNotFoundError(f'cannot read mask {path}')
    if mask.ndim == 3:
        return cv2.cvtColor(mask[..., :3], cv2.COLOR_BGR2RGB)
    return mask


def lookup_table(mapping: dict, default: int = IGNORE_INDEX, size: int = 256) -> np.ndarray:
    """uint8 table raw id -> train id from a dict (ids not in it -> ``default``)."""
    table = np.full(size, default, np.uint8)
    for raw, train in mapping.items():
        table[int(raw)] = int(train)
    return table


def colour_to_ids(mask: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Class ids of an HxWx3 RGB colour mask (colours not in ``palette`` -> ``ignore_index``)."""
    codes = (mask[..., 0].astype(np.int32) << 16) | (mask[..., 1].astype(np.int32) << 8) | mask[..., 2]
    uniq, inverse = np.unique(codes, return_inverse=True)
    by_code = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(palette)}
    ids = np.array([by_code.get(int(c), ignore_index) for c in uniq], np.uint8)
    return ids[inverse].reshape(mask.shape[:2])


class SegDataset:
    """Image/label file pairs with a class set; ``label_table`` maps stored ids to train ids."""

    layout = 'files'

    def __init__(self, pairs, classes, palette=None, ignore_index=IGNORE_INDEX, label_table=None, names=None,
                 root=None, split=None):
        self.pairs = list(pairs)
        self.classes = list(classes)
        self.palette = [tuple(int(v) for v in c) for c in (palette or make_palette(len(self.classes)))]
        self.ignore_index = int(ignore_index)
        self.label_table = label_table
        self.names = list(names) if names is not None else [Path(img).stem for img, _ in self.pairs]
        self.root, self.split = root, split

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        image_path, label_path = self.pairs[index]
        return self.checked(read_rgb(image_path), self.convert_label(read_mask(label_path)), image_path, label_path)

    def checked(self, image: np.ndarray, label: np.ndarray, image_source: str | os.PathLike,
                label_source: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """``(image, label)`` of one sample once they are known to agree in size and every label value to be a
        class id or the ignore index; else a UserError naming the sample (``image_source`` / ``label_source``:
        its files, or its frame of a bag)."""
        if image.shape[:2] != label.shape[:2]:
            raise UserError(f'{image_source}: the image is {image.shape[1]}x{image.shape[0]} pixels, its label '
                            f'{label_source} {label.shape[1]}x{label.shape[0]}; they must be the same size')
        n = len(self.classes)
        if label.size and label.max() >= n:
            values = np.unique(label[label >= n])
            bad = values[values != self.ignore_index]
            if bad.size:
                raise UserError(f'{label_source}: label value {bad[0]} is neither a class id of the dataset '
                                f'(0-{n - 1}, {n} classes) nor its ignore index {self.ignore_index}')
        return image, label

    def sample_meta(self, index: int) -> dict:
        """Per-sample metadata (rendered scenes: pose, intrinsics, clutter, ...); {} when there is none."""
        return {}

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        """Stored label -> uint8 train ids."""
        if raw.ndim == 3:
            return colour_to_ids(raw, self.palette, self.ignore_index)
        if self.label_table is not None:
            return self.label_table[np.clip(raw, 0, len(self.label_table) - 1)]
        if raw.dtype != np.uint8:
            raw = np.where(raw > 255, self.ignore_index, raw)
        return raw.astype(np.uint8)

    def __repr__(self):
        return (f'{type(self).__name__}({self.root}, split={self.split!r}, {len(self)} samples, '
                f'{len(self.classes)} classes)')


def _files(folder, suffixes=IMAGE_SUFFIXES):
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob('*') if p.suffix.lower() in suffixes and p.is_file())


def _require(pairs, what):
    if not pairs:
        raise FileNotFoundError(f'no image/label pairs found for {what}')
    return pairs


class ADE20KDataset(SegDataset):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes with reduce_zero_label."""

    layout = 'ade20k'

    def __init__(self, root, split='val'):
        root = Path(root)
        if (root / 'ADEChallengeData2016').is_dir():
            root = root / 'ADEChallengeData2016'
        sub = ADE20K_SPLITS.get(split, split)
        pairs = []
        for image in _files(root / 'images' / sub):
            label = root / 'annotations' / sub / image.relative_to(root / 'images' / sub).with_suffix('.png')
            if label.exists():
                pairs.append((image, label))
        table = lookup_table({k: k - 1 for k in range(1, 151)})
        super().__init__(_require(pairs, f'ADE20K {split} in {root}'), ADE20K_CLASSES, make_palette(150),
                         label_table=table, root=root, split=split)


class CityscapesDataset(SegDataset):
    """Cityscapes fine annotations, 19 train classes."""

    layout = 'cityscapes'

    def __init__(self, root, split='val'):
        root = Path(root)
        pairs, names = [], []
        image_root = root / 'leftImg8bit' / split
        for image in _files(image_root, ('.png',)):
            if not image.name.endswith('_leftImg8bit.png'):
                continue
            stem = image.name[:-len('_leftImg8bit.png')]
            folder = root / 'gtFine' / split / image.parent.relative_to(image_root)
            train_ids = folder / f'{stem}_gtFine_labelTrainIds.png'
            label_ids = folder / f'{stem}_gtFine_labelIds.png'
            if train_ids.exists():
                pairs.append((image, train_ids))
            elif label_ids.exists():
                pairs.append((image, label_ids))
            else:
                continue
            names.append(str(image.parent.relative_to(image_root) / stem))
        super().__init__(_require(pairs, f'Cityscapes {split} in {root}'), [n for n, _ in CITYSCAPES_CLASSES],
                         [c for _, c in CITYSCAPES_CLASSES], names=names, root=root, split=split)
        self._from_label_ids = lookup_table({raw: k for k, raw in enumerate(CITYSCAPES_LABEL_IDS)})

    def __getitem__(self, index):
        image_path, label_path = self.pairs[index]
        label = read_mask(label_path)
        if Path(label_path).name.endswith('_labelIds.png'):
            label = self._from_label_ids[label]
        return self.checked(read_rgb(image_path), label.astype(np.uint8), image_path, label_path)


class CamVidDataset(SegDataset):
    """CamVid in the SegNet layout: 11 classes, id 11 (void) -> 255. ``sequences``: keep only the frames of these
    video sequences (file names start with the sequence, e.g. ``0001TP``, ``Seq05VD``)."""

    layout = 'camvid'

    def __init__(self, root, split='val', sequences=None):
        root = Path(root)
        pairs = []
        for part in split.split('+'):
            pairs += self._pairs(root, part)
        if sequences is not None:
            if isinstance(sequences, str) or not all(isinstance(q, str) and q for q in sequences):
                raise UserError(f'CamVid sequences must be a list of sequence names, got {sequences!r}')
            pairs = [(image, label) for image, label in pairs if Path(image).name.startswith(tuple(sequences))]
        table = lookup_table({k: k for k in range(11)})
        super().__init__(_require(pairs, f'CamVid {split} in {root}'), [n for n, _ in CAMVID_CLASSES],
                         [c for _, c in CAMVID_CLASSES], label_table=table, root=root, split=split)

    @staticmethod
    def _pairs(root, split):
        """(image, label) pairs of one split: SegNet's ``split/`` + ``splitannot/`` or ``split/images`` +
        ``split/labels``; a label has the image's stem and any image suffix."""
        if (root / split / 'images').is_dir():
            images, labels = root / split / 'images', root / split / 'labels'
        else:
            images, labels = root / split, root / f'{split}annot'
        pairs = []
        for image in _files(images):
            stem = labels / image.relative_to(images).with_suffix('')
            label = next((stem.with_suffix(s) for s in ('.png', image.suffix) if stem.with_suffix(s).exists()),
                         None)
            if label is not None:
                pairs.append((image, label))
        return pairs


def load_classes_yaml(path: str | os.PathLike) -> tuple[list[str], list | None, int, dict | None]:
    """(names, palette or None, ignore_index, label_map or None) from a classes YAML."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    names = data.get('names') or data.get('classes')
    if not names:
        raise ValueError(f'{path}: no "names" list')
    return names, data.get('palette'), int(data.get('ignore_index', IGNORE_INDEX)), data.get('label_map')


class GenericDataset(SegDataset):
    """``images/`` + ``masks/`` + ``classes.yaml`` (see the module docstring for splits)."""

    layout = 'generic'

    def __init__(self, root, split='val', classes=None, palette=None, ignore_index=None, label_map=None):
        root = Path(root)
        yaml_names, yaml_palette, yaml_ignore, yaml_map = (
            load_classes_yaml(root / 'classes.yaml') if (root / 'classes.yaml').exists() else (None,) * 4)
        names = classes or yaml_names or list(SCENE_CLASS_NAMES)
        if palette is None:
            palette = yaml_palette or (list(SCENE_PALETTE) if list(names) == list(SCENE_CLASS_NAMES) else None)
        ignore = ignore_index if ignore_index is not None else (yaml_ignore if yaml_ignore is not None
                                                                else IGNORE_INDEX)
        label_map = label_map or yaml_map
        pairs, sample_names = self._find(root, split)
        table = lookup_table(label_map, ignore) if label_map else None
        super().__init__(_require(pairs, f'{split} in {root}'), names, palette, ignore, table, sample_names,
                         root=root, split=split)

    def sample_meta(self, index: int) -> dict:
        """``meta/<name>.json`` beside ``masks/<name>.png`` (written by ``seg-perception render``), or {}."""
        mask = Path(self.pairs[index][1])
        try:
            rel = mask.relative_to(self.root)
        except ValueError:
            return {}
        path = self.root.joinpath(*('meta' if part == 'masks' else part for part in rel.parts)).with_suffix('.json')
        return json.loads(path.read_text()) if path.is_file() else {}

    @staticmethod
    def _find(root, split):
        for images, masks in ((root / 'images' / split, root / 'masks' / split),
                              (root / split / 'images', root / split / 'masks'),
                              (root / 'images', root / 'masks')):
            if images.is_dir() and masks.is_dir() and _files(images):
                break
        else:
            return [], []
        wanted = None
        if images == root / 'images':
            for listing in (root / f'{split}.txt', root / 'splits' / f'{split}.txt'):
                if listing.exists():
                    wanted = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
                    break
        pairs, names = [], []
        for image in _files(images):
            rel = image.relative_to(images).with_suffix('')
            if rel.parts and rel.parts[0] in ('train', 'val', 'test') and images == root / 'images':
                continue
            if wanted is not None and str(rel) not in wanted and image.stem not in wanted:
                continue
            mask = masks / rel.with_suffix('.png')
            if mask.exists():
                pairs.append((image, mask))
                names.append(str(rel))
        return pairs, names


class BagDataset(SegDataset):
    """Image/label pairs of a rosbag2 (mcap or sqlite3), paired by header stamp (see ``bags.iter_bag_pairs``)."""

    layout = 'rosbag'

    def __init__(self, path, image_topic='/camera/image_raw', gt_topic='/ground_truth/labels', classes=None,
                 palette=None, ignore_index=IGNORE_INDEX, label_map=None, tolerance_ns=20_000_000):
        from seg_perception.offline.data.bags import BagFrames
        path = Path(path)
        if path.is_file():
            path = path.parent
        self.frames = BagFrames(path, image_topic, gt_topic, tolerance_ns)
        names = classes or list(SCENE_CLASS_NAMES)
        if palette is None and list(names) == list(SCENE_CLASS_NAMES):
            palette = list(SCENE_PALETTE)
        table = lookup_table(label_map, ignore_index) if label_map else None
        super().__init__([], names, palette, ignore_index, table, [str(s) for s, _, _ in self.frames.pairs],
                         root=path, split=None)
        self.stamps = [s for s, _, _ in self.frames.pairs]

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, index):
        stamp, image, label = self.frames[index]
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        return self.checked(image, self.convert_label(label), f'{self.root}: {self.frames.image_topic} at {stamp}',
                            f'{self.root}: {self.frames.gt_topic} at {stamp}')


LAYOUTS = {'ade20k': ADE20KDataset, 'cityscapes': CityscapesDataset, 'camvid': CamVidDataset,
           'generic': GenericDataset, 'rosbag': BagDataset}


def is_bag(path: str | os.PathLike) -> bool:
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').exists()
    return path.suffix in ('.mcap', '.db3') and (path.parent / 'metadata.yaml').exists()


def detect_layout(root: str | os.PathLike) -> str:
    """Layout name of a dataset folder (or bag), or raise ValueError."""
    root = Path(root)
    if is_bag(root):
        return 'rosbag'
    if (root / 'ADEChallengeData2016').is_dir() or ((root / 'annotations').is_dir() and any(
            (root / 'images' / s).is_dir() for s in ('training', 'validation'))):
        return 'ade20k'
    if (root / 'leftImg8bit').is_dir() and (root / 'gtFine').is_dir():
        return 'cityscapes'
    if not (root / 'classes.yaml').exists() and any(
            (root / f'{s}annot').is_dir() or (root / s / 'labels').is_dir() for s in ('train', 'val', 'test')):
        return 'camvid'
    if (root / 'classes.yaml').exists() or (root / 'images').is_dir() or any(
            (root / s / 'images').is_dir() for s in ('train', 'val', 'test')):
        return 'generic'
    if not root.exists():
        raise UserError(f'{root}: not found (give a dataset folder, a dataset YAML or a rosbag2 folder)')
    raise UserError(f'{root}: not a dataset or a rosbag2 (expected images/ + masks/ + classes.yaml, an ADE20K, '
                    'Cityscapes or CamVid folder, or a bag folder with metadata.yaml)')


# what the values of a dataset YAML must be (a reader checks its other options itself)
VALUE_TYPES = {'root': (str, 'a path'), 'layout': (str, 'a layout name'), 'split': (str, 'a split name'),
               'mix': (list, 'a list of datasets'), 'names': (list, 'a list of class names'),
               'classes': (list, 'a list of class names'), 'palette': (list, 'a list of [R, G, B] colours'),
               'ignore_index': (int, 'an integer'), 'label_map': (dict, 'a mapping of ids to ids'),
               'image_topic': (str, 'a topic name'), 'gt_topic': (str, 'a topic name'),
               'tolerance_ns': (int, 'an integer')}
MIX_KEYS = ('mix', 'names', 'palette')


def _layout_keys(layout: str) -> list[str]:
    """The keys a dataset YAML of ``layout`` may have: layout, root, split and the options of its reader."""
    return ['layout', 'root', 'split'] + [name for name in inspect.signature(LAYOUTS[layout]).parameters
                                          if name not in ('root', 'path', 'split')]


def _check_keys(source: str | os.PathLike, options: dict, allowed: Sequence[str], what: str) -> None:
    """A UserError naming ``source`` for a key not in ``allowed``."""
    unknown = [key for key in options if key not in allowed]
    if unknown:
        raise UserError(f'{source}: unknown key {unknown[0]!r} for {what} (its keys: {", ".join(allowed)})')


def _check_values(source: str | os.PathLike, options: dict) -> None:
    """A UserError naming ``source`` and the key for a value of the wrong type (VALUE_TYPES)."""
    for key, value in options.items():
        kind, expected = VALUE_TYPES.get(key, (object, ''))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f'{source}: {key} must be {expected}, not {value!r}')
    label_map = options.get('label_map') or {}
    if not all(type(k) is int and type(v) is int and 0 <= k <= 255 and 0 <= v <= 255 for k, v in label_map.items()):
        raise UserError(f'{source}: label_map must map ids to ids (integers 0-255), not {label_map!r}')


def open_dataset(spec: str | os.PathLike, split: str | None = None, layout: str | None = None, **kw) -> SegDataset:
    """A dataset from a folder (layout detected unless given), a dataset YAML or a rosbag2 path.

    A dataset YAML has ``layout`` (optional), ``root`` (relative to the YAML's folder), ``split`` and layout
    options (generic: ``classes``, ``palette``, ``ignore_index``, ``label_map``; rosbag: ``image_topic``,
    ``gt_topic``, ...). Arguments given here override the YAML; ``split`` defaults to the YAML's, else 'val'.
    Bags take ``image_topic`` and ``gt_topic`` (default ``/camera/image_raw`` and ``/ground_truth/labels``).
    A YAML that is not a mapping, a key the layout does not take, a value of the wrong type, an unknown layout or a
    first sample that is not a pair of an image and a label of its size in the dataset's class ids is a UserError
    (later samples are checked as they are read)."""
    spec = Path(spec)
    source, options = spec, {}
    if spec.suffix in ('.yaml', '.yml') and spec.is_file():
        with open(spec) as f:  # a file stream: YAML errors name the file
            options = yaml.safe_load(f) or {}
        if not isinstance(options, dict):
            raise UserError(f'{spec}: a dataset YAML is a mapping (layout, root, split, ... or mix), not a '
                            f'{type(options).__name__}')
        if 'mix' in options:
            _check_keys(spec, options, MIX_KEYS, 'a dataset mix')
            _check_values(spec, options)
            return MixedDataset.from_spec(spec, options['mix'], split or 'val', options.get('names'),
                                          options.get('palette'))
        _check_values(spec, options)
        root = Path(options.pop('root', '.'))
        spec = root if root.is_absolute() else spec.parent / root
        layout = layout or options.pop('layout', None)
        split = split or options.pop('split', None)
        options.pop('layout', None)
        options.pop('split', None)
    options.update(kw)
    layout = layout or detect_layout(spec)
    if layout not in LAYOUTS:
        raise UserError(f'{source}: unknown layout {layout!r} (layouts: {", ".join(sorted(LAYOUTS))})')
    _check_keys(source, options, _layout_keys(layout), f'a {layout} dataset')
    _check_values(source, options)
    if layout == 'rosbag':
        dataset = BagDataset(spec, **options)
    else:
        dataset = LAYOUTS[layout](spec, split=split or 'val', **options)
    if len(dataset):   # read now: a mask of another size or with values that are no class ids stops a run at once
        dataset[0]
    return dataset


class MixedDataset(SegDataset):
    """Several datasets sampled as one (a dataset YAML's ``mix`` list), in the class set of the YAML's ``names``
    (and ``palette``) or else of the first part.

    Each entry is a dataset YAML body (``root`` relative to the YAML, ``layout``, options) plus optional
    ``label_map`` (its train id -> the mix's id; ids not listed become ignore) and ``split``: a name, or a mapping
    from the requested split to the part's split (``{train: train+val}``: the part only serves ``train``)::

        mix:
          - {root: ../../data/scenes}
          - {root: ../../../shared/datasets/camvid, layout: camvid, split: {train: train+val},
             label_map: {0: 5, 1: 1, 3: 0, 4: 0, 8: 4, 9: 3}}
    """

    layout = 'mix'

    def __init__(self, parts, tables, split, classes=None, palette=None):
        if not parts:
            raise UserError(f'dataset mix: no part serves split {split!r}')
        self.parts, self.tables = list(parts), list(tables)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        first = self.parts[0]
        super().__init__([], classes or first.classes, palette or (None if classes else first.palette),
                         first.ignore_index, split=split, names=[n for p in self.parts for n in p.names])

    @classmethod
    def from_spec(cls, yaml_path: str | os.PathLike, entries: Sequence[dict], split: str,
                  classes: Sequence[str] | None = None,
                  palette: Sequence[Sequence[int]] | None = None) -> 'MixedDataset':
        """The mix of a dataset YAML's ``mix`` list; an entry that is not a dataset mapping, or whose labels are
        not the mix's class ids, is a UserError naming the YAML and the entry."""
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise UserError(f'{yaml_path}: mix must be a list of datasets (mappings with root, layout, split, '
                            f'label_map, ...), not {entries!r}')
        parts, tables, served = [], [], []
        for number, entry in enumerate(entries, 1):
            where = f'{yaml_path}: mix entry {number}'
            entry = dict(entry)
            part_split = entry.pop('split', split)
            if isinstance(part_split, dict):
                if split not in part_split:
                    continue
                part_split = part_split[split]
            _check_values(where, {**entry, 'split': part_split})
            label_map = entry.pop('label_map', None)
            root = Path(entry.pop('root', '.'))
            layout = entry.pop('layout', None)
            try:
                parts.append(open_dataset(root if root.is_absolute() else Path(yaml_path).parent / root,
                                          split=part_split, layout=layout, **entry))
            except UserError as exc:
                raise UserError(f'{where}: {exc}') from None
            tables.append(None if label_map is None else lookup_table(label_map))
            served.append((where, label_map))
        mix = cls(parts, tables, split, classes, palette)
        n, ignore = len(mix.classes), mix.ignore_index
        for part, (where, label_map) in zip(parts, served):
            ids = set(label_map.values()) if label_map is not None else set(range(len(part.classes)))
            bad = sorted(i for i in ids if i >= n and i != ignore)
            if bad:
                raise UserError(f'{where}: label {bad[0]} is neither a class id of the mix (0-{n - 1}: '
                                f'{", ".join(map(str, mix.classes))}) nor its ignore index {ignore} (a label_map '
                                "maps the entry's ids onto the mix's)")
        return mix

    def __len__(self):
        return int(self.offsets[-1])

    def _locate(self, index):
        part = int(np.searchsorted(self.offsets, index, side='right') - 1)
        return part, index - int(self.offsets[part])

    def __getitem__(self, index):
        part, local = self._locate(index)
        image, label = self.parts[part][local]
        table = self.tables[part]
        return image, (label if table is None else table[label])

    def sample_meta(self, index: int) -> dict:
        part, local = self._locate(index)
        return self.parts[part].sample_meta(local)

    def __repr__(self):
        return f'MixedDataset({", ".join(repr(p) for p in self.parts)}, split={self.split!r})'
