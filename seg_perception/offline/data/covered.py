"""``seg-perception cover``: floor seen under things, relabelled ``covered_floor`` in a rendered dataset.

A single camera image cannot tell the floor under a table top from the floor in front of a box: both are floor
pixels below a standing thing, and the table's contact (where its top meets the floor in the image) lies beyond
the floor under it. Projected onto the ground, that floor is published free although the table occupies it; on
the held-out costmap bag this is most of the monocular false-free cells (README, "Costmap"). A model that labels
such floor as its own class lets the costmap keep it out of the free space.

The renderer knows where the floor is covered: every frame of ``seg-perception render --out`` carries its depth
image, the camera's pose, and the ground-truth occupancy around the robot (object footprints). A floor pixel
whose 3-D point falls in an occupied cell becomes ``covered_floor`` (the next class id), the footprint's edge
cells included by default (the floor right at an object's base is in its footprint's cell: on the held-out costmap
bag, perfect labels leave 0.8 % of the free cells occupied with them, 3.0 % with ``inset`` 1, which keeps one cell
in from the edge). Points off the occupancy grid keep their label.

Writes a dataset in the same layout: ``masks/`` relabelled, ``images/`` linked to the source's, and
``classes.yaml`` with the class appended. Torch-free (numpy, OpenCV).
"""
import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import yaml

from ...errors import UserError
from ...runtime.costmap import GridSpec
from ...runtime.pose import invert, pose_matrix, quat_to_matrix, transform_matrix
from ..argtypes import non_negative_int

COVERED_FLOOR = 'covered_floor'
COVERED_COLOUR = (255, 160, 0)
FLOOR = 0


def camera_to_base(meta: dict) -> np.ndarray:
    """4x4 transform of the camera optical frame into the robot base frame, from a rendered frame's meta."""
    pose, base = meta['pose'], meta['base_pose']
    camera = transform_matrix(pose['position'], quat_to_matrix(*pose['orientation']))
    return invert(pose_matrix(base['x'], base['y'], 0.0, 0.0, 0.0, base['yaw'])) @ camera


def covered_floor(mask: np.ndarray, depth_m: np.ndarray, intrinsics: dict, to_base: np.ndarray,
                  occupancy: np.ndarray, grid: GridSpec, floor: int = FLOOR, inset: int = 0) -> np.ndarray:
    """Bool (H, W): floor pixels of ``mask`` whose point (``depth_m`` along the optical axis, pinhole
    ``intrinsics`` fx fy cx cy, ``to_base`` optical -> base) lies in an occupied cell (>= 50) of ``occupancy``
    (the cells of ``grid``, row = y) at least ``inset`` cells in from the footprint's edge."""
    v, u = np.nonzero((mask == floor) & np.isfinite(depth_m) & (depth_m > 0))
    z = depth_m[v, u].astype(np.float64)
    points = np.stack([(u - intrinsics['cx']) * z / intrinsics['fx'], (v - intrinsics['cy']) * z / intrinsics['fy'],
                       z], 1) @ to_base[:3, :3].T + to_base[:3, 3]
    cells = grid.cell_index(points[:, 0], points[:, 1])
    core = (occupancy >= 50).astype(np.uint8)
    if inset > 0:
        core = cv2.erode(core, np.ones((2 * inset + 1,) * 2, np.uint8), borderValue=0)
    hit = cells >= 0
    hit[hit] = core.reshape(-1)[cells[hit]] > 0
    out = np.zeros(mask.shape, bool)
    out[v[hit], u[hit]] = True
    return out


def cover_dataset(src: Path, dst: Path, split: str = '', inset: int = 0) -> dict:
    """Relabel one split of a rendered dataset into ``dst``; returns frame and pixel counts."""
    sub = Path(split) if split else Path()
    masks = sorted((src / 'masks' / sub).glob('*.png'))
    if not masks:
        raise UserError(f'{src / "masks" / sub}: no masks (a dataset of `seg-perception render --out`?)')
    if not (src / 'classes.yaml').is_file():
        raise UserError(f'{src}: no classes.yaml (a dataset of `seg-perception render --out`?)')
    classes = yaml.safe_load((src / 'classes.yaml').read_text())
    if COVERED_FLOOR in classes['names']:
        raise UserError(f'{src}: already has {COVERED_FLOOR!r}')
    label = len(classes['names'])
    (dst / 'masks' / sub).mkdir(parents=True, exist_ok=True)
    images = dst / 'images' / sub
    if not images.exists():
        images.parent.mkdir(parents=True, exist_ok=True)
        images.symlink_to((src / 'images' / sub).resolve(), target_is_directory=True)
    counts = {'frames': 0, 'floor_pixels': 0, 'covered_pixels': 0}
    for path in masks:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        depth = cv2.imread(str(src / 'depth' / sub / path.name), cv2.IMREAD_UNCHANGED)
        occupancy = cv2.imread(str(src / 'occupancy' / sub / path.name), cv2.IMREAD_UNCHANGED)
        meta_path = src / 'meta' / sub / f'{path.stem}.json'
        if depth is None or occupancy is None or not meta_path.is_file():
            raise UserError(f'{path.stem}: no depth, occupancy or meta beside its mask in {src}')
        meta = json.loads(meta_path.read_text())
        info = meta['occupancy_info']
        origin_x, origin_y = (float(v) for v in info['origin'][:2])
        grid = GridSpec(float(info['resolution']), occupancy.shape[1], occupancy.shape[0], origin_x, origin_y)
        if 2 * inset + 1 > min(grid.shape):   # the erosion's square would not fit in the grid: nothing left
            raise UserError(f'--inset {inset}: give at most {(min(grid.shape) - 1) // 2} cells (the occupancy grids '
                            f'of {src} are {grid.width}x{grid.height} cells of {grid.resolution:g} m)')
        covered = covered_floor(mask, depth.astype(np.float64) / 1000.0, meta['intrinsics'], camera_to_base(meta),
                                occupancy.astype(np.int16) * (occupancy != 255), grid, inset=inset)
        mask = mask.copy()
        mask[covered] = label
        cv2.imwrite(str(dst / 'masks' / sub / path.name), mask)
        counts['frames'] += 1
        counts['floor_pixels'] += int((mask == FLOOR).sum() + covered.sum())
        counts['covered_pixels'] += int(covered.sum())
    classes['names'] = [*classes['names'], COVERED_FLOOR]
    if 'palette' in classes:
        classes['palette'] = [*classes['palette'], list(COVERED_COLOUR)]
    (dst / 'classes.yaml').write_text(yaml.safe_dump(classes))
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('data', help='a dataset of `seg-perception render --out` (depth/, occupancy/, meta/ inside)')
    parser.add_argument('--out', required=True, help='dataset folder to write (masks relabelled, images linked)')
    parser.add_argument('--split', default='', help='the split subfolder (train, val, ...; "" = none)')
    parser.add_argument('--inset', type=non_negative_int, default=0,
                        help="cells in from a footprint's edge where covered floor starts (0: the edge cells too)")


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.data), Path(args.out)
    if src.resolve() == dst.resolve():
        raise UserError('--out must be another folder than the source dataset')
    counts = cover_dataset(src, dst, args.split, args.inset)
    share = 100.0 * counts['covered_pixels'] / max(counts['floor_pixels'], 1)
    print(f'{counts["frames"]} frames -> {dst}: {share:.2f} % of the floor pixels are {COVERED_FLOOR}')
    return 0
