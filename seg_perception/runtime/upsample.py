"""Full-resolution labels from low-resolution logits at a fraction of the cost of upsampling every class.

The reference is "bilinear upsampling of the (C, h, w) logits to the output size (half-pixel centres, edges
clamped: PyTorch ``F.interpolate(align_corners=False)``, ONNX ``Resize`` half_pixel), then argmax". Computing it
costs C interpolations per output pixel; with 150 classes at 512x512 that is several times the network itself.

:class:`LogitsUpsampler` gives exactly the same labels for far less:

* Every output pixel interpolates between the 4 logit vectors of one coarse cell (2x2 coarse pixels). When
  those 4 corners have the same argmax k, the interpolated logits have argmax k as well (``l_k - l_j`` is >= 0
  at every corner, so is any convex combination), so the label is the coarse argmax, copied (nearest fill).
* Only pixels in cells whose corners disagree are interpolated, and only for the classes that can win somewhere
  in the cell: class j is out when its largest corner value is below ``max_k min_corners l_k`` (the
  interpolated top logit is never below that), or when it is below that leading class k at all 4 corners (an
  interpolation is a convex combination of the corners, so it stays below k everywhere in the cell). Exact,
  not a heuristic: only float rounding can flip a near-tie, as it does between any two implementations of the
  reference (against PyTorch: a few pixels in 7 of 300 random geometries and logits, >= 99.996 % in each).
* With many classes, a cell is first tried with its corners' two best classes only: every other class is at
  most its corner's third best value at each corner, so below the interpolation of those values; where the
  candidates' top is strictly above that bound at every pixel of the cell, they decide alone (most cells), and
  only the other cells look at all C classes. With ``exact=False`` the corners' two best classes decide every
  cell, unchecked: a class that is no corner's first or second can then not win a pixel, which it does in the
  exact rule on about 0.05 % of the pixels (150 classes, ``bench peer``'s logits), for a quarter less time.
* With many classes the work runs along per-pixel rows of the logits ((h * w, C), one transpose); logits that
  are a (C, h, w) view of per-pixel memory (an ``nhwc`` model's output, see ``runtime.metadata``) are read as
  they are, without the transpose.

Confidence (max softmax) is the coarse max-softmax interpolated bilinearly (one channel), not the max softmax
of the interpolated logits: they agree inside regions and differ a little on class boundaries. With many classes
its top logits are the ones the argmax found (gathered, not searched again).

The output grid need not be an integer multiple of the logits: an :class:`AxisMap` maps each output row
(column) to its two coarse rows and weight, for plain resizing and for letterboxed inputs alike.
Robot side: numpy and OpenCV only.
"""
import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class AxisMap:
    """Bilinear sampling of one axis: output index -> coarse indices ``i0``, ``i1`` and weight ``frac`` of i1."""
    i0: np.ndarray    # (n_out,) int64
    i1: np.ndarray    # (n_out,) int64
    frac: np.ndarray  # (n_out,) float32

    @classmethod
    def build(cls, n_out: int, n_in: int, scale: float, offset: float = 0.0) -> 'AxisMap':
        """Output pixel centre ``o + 0.5`` sits at input coordinate ``(o + 0.5) * scale + offset`` (in input
        pixels, 0 = the first pixel's left edge); PyTorch's half-pixel rule with edge clamping."""
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale + offset - 0.5
        src = np.maximum(src, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = np.where(i1 > i0, src - i0, 0.0).astype(np.float32)
        return cls(i0, i1, frac)

    @classmethod
    def resize(cls, n_out: int, n_in: int) -> 'AxisMap':
        """Plain resizing of ``n_in`` pixels to ``n_out`` (what ``F.interpolate(size=...)`` does)."""
        return cls.build(n_out, n_in, n_in / n_out)


def coarse_label_confidence(logits: np.ndarray, calibrated: np.ndarray | None = None) -> tuple:
    """(C, h, w) logits -> (argmax int64 (h, w), max softmax float32 (h, w)) at the logits' resolution; the max
    softmax of ``calibrated`` (C, h, w) logits instead, when given (e.g. per-class temperatures).

    numpy's ``argmax(axis=0)`` walks the class axis with a stride of a whole plane (30x slower at 150 classes), so
    the argmax is a loop over the classes (with many classes the upsampler works on per-pixel rows instead:
    ``argmax(axis=1)`` and :func:`rows_max_softmax`)."""
    top = logits.max(axis=0)
    labels = np.zeros(top.shape, np.int64)
    for c in range(logits.shape[0] - 1, 0, -1):   # descending: the lowest tying class wins, as in argmax
        labels[logits[c] == top] = c
    labels[logits[0] == top] = 0
    return labels, max_softmax(logits, top=top) if calibrated is None else max_softmax(calibrated)


def rows_max_softmax(by_pixel: np.ndarray, top: np.ndarray | None = None) -> np.ndarray:
    """(n, C) float32 logit rows -> each row's max softmax (n,) float32; ``top``: each row's largest logit, when
    already known (e.g. gathered at the argmax); else numpy's row maximum (``cv2.reduce(REDUCE_MAX)`` along rows
    takes 5x as long here)."""
    top = by_pixel.max(axis=1) if top is None else top
    if -60 < top.min() and top.max() < 60:
        # exp(l) fits float32 (up to 1e26 per class; what underflows is below 1e-12 of the top's term):
        # softmax max = exp(top) / sum exp(l), one pass fewer than shifting every logit by its top first
        return (np.exp(top) / cv2.reduce(cv2.exp(by_pixel), 1, cv2.REDUCE_SUM)[:, 0]).astype(np.float32)
    shifted = by_pixel - top[:, None]
    cv2.exp(shifted, shifted)
    return (1.0 / cv2.reduce(shifted, 1, cv2.REDUCE_SUM)[:, 0]).astype(np.float32)


def pixel_rows(logits: np.ndarray) -> np.ndarray:
    """(C, h, w) logits -> (h * w, C) per-pixel rows: a view when the logits already are a view of per-pixel
    (h, w, C) memory, else one ``cv2.transpose``."""
    rows = logits.transpose(1, 2, 0)
    if rows.flags.c_contiguous:
        return rows.reshape(-1, logits.shape[0])
    return cv2.transpose(np.ascontiguousarray(logits).reshape(logits.shape[0], -1))


def max_softmax(logits: np.ndarray, axis: int = 0, top: np.ndarray | None = None) -> np.ndarray:
    """The largest softmax probability along the class ``axis``, float32; ``top``: the logits' maximum along
    it, when already known."""
    top = logits.max(axis=axis) if top is None else top
    shifted = np.empty(logits.shape, np.float32)   # C order whatever the logits' layout, so that ...
    np.subtract(logits, np.expand_dims(top, axis), out=shifted)
    row = shifted.reshape(1, -1)                   # ... this is a view: cv2.exp in place, 3x numpy's exp here
    cv2.exp(row, row)                              # (0.10 vs 0.27 ms at 150 x 64 x 64)
    return (1.0 / shifted.sum(axis=axis)).astype(np.float32)


def bilinear_logits(logits: np.ndarray, rows: AxisMap, cols: AxisMap) -> np.ndarray:
    """The reference: every class interpolated to the output grid, (C, H, W) float32."""
    fy = rows.frac[None, :, None]
    rowed = logits[:, rows.i0] * (1 - fy) + logits[:, rows.i1] * fy
    fx = cols.frac[None, None, :]
    return (rowed[:, :, cols.i0] * (1 - fx) + rowed[:, :, cols.i1] * fx).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """One axis's output indices grouped by coarse index j (the outputs whose ``i0`` is j: a contiguous run). A run
    longer than the axis's usual one (at a clamped edge) is split into entries of at most that length, so that
    every entry pads to the usual length, not to the edge's: ``index``/``frac`` (E, B), each entry's run padded
    by repeating its last output; per coarse index its output ``count``, its ``first`` entry and ``entries``."""
    index: np.ndarray
    frac: np.ndarray
    count: np.ndarray
    first: np.ndarray
    entries: np.ndarray

    @classmethod
    def build(cls, axis: AxisMap, n_in: int) -> '_Blocks':
        starts = np.searchsorted(axis.i0, np.arange(n_in), 'left')
        count = np.searchsorted(axis.i0, np.arange(n_in), 'right') - starts
        length = max(1, -(-len(axis.i0) // max(1, int((count > 0).sum()))))   # the usual run, rounded up
        entries = -(-count // length)
        first = np.cumsum(entries) - entries
        owner = np.repeat(np.arange(n_in), entries)
        part = np.arange(len(owner)) - first[owner]
        begin = starts[owner] + part * length
        size = np.minimum(count[owner] - part * length, length)
        steps = np.minimum(np.arange(length)[None], np.maximum(size - 1, 0)[:, None])
        index = np.minimum(begin[:, None] + steps, len(axis.i0) - 1)
        return cls(index, axis.frac[index], count, first, entries)


class LogitsUpsampler:
    """Labels and confidence on an output grid from (C, h, w) logits; build once per (logits size, output
    geometry) and call :meth:`__call__` per frame. ``counters`` of the last call: ``ambiguous_cells`` (coarse
    cells whose pixels were interpolated), ``ambiguous_fraction`` (of the output pixels), ``max_candidates`` (classes
    interpolated in the worst cell). ``exact``: with more than ``FEW`` classes, whether cells the corners' two best
    classes cannot provably decide are checked against all classes (see the module docstring)."""

    # cells are refined in groups by how many classes can win in them, so one busy cell costs only itself
    CANDIDATE_GROUPS = (2, 3, 5, 8)
    FEW = 8   # more classes than this: per-pixel rows (one transpose), a two-best pass and dominance pruning

    def __init__(self, rows: AxisMap, cols: AxisMap, coarse_hw: tuple, exact: bool = True):
        self.rows, self.cols = rows, cols
        self.exact = exact
        self.coarse_hw = tuple(coarse_hw)
        self.out_hw = (len(rows.i0), len(cols.i0))
        h, w = self.coarse_hw
        # the coarse neighbour below / right of each coarse pixel (edges repeat themselves)
        self._down = np.minimum(np.arange(h) + 1, h - 1)
        self._right = np.minimum(np.arange(w) + 1, w - 1)
        self._row_blocks = _Blocks.build(rows, h)
        self._col_blocks = _Blocks.build(cols, w)
        self._row_offsets = self._row_blocks.index * self.out_hw[1]   # (E, B): where each entry's rows start
        # each entry's bilinear weights: rows (E, By, 2) [1 - fy, fy], columns (E, 2, Bx) [1 - fx; fx]
        fy, fx = self._row_blocks.frac, self._col_blocks.frac
        self._weights_y = np.stack([1 - fy, fy], axis=2).astype(np.float32)
        self._weights_x = np.stack([1 - fx, fx], axis=1).astype(np.float32)
        # the confidence (one channel): cv2.resize when the grid is a plain resize, else a fixed-point remap
        plain = [AxisMap.resize(len(a.i0), n) for a, n in ((rows, h), (cols, w))]
        self._plain_resize = all(np.array_equal(a.i0, p.i0) and np.allclose(a.frac, p.frac, atol=1e-6)
                                 for a, p in zip((rows, cols), plain))
        map_x, map_y = np.meshgrid((cols.i0 + cols.frac).astype(np.float32), (rows.i0 + rows.frac).astype(np.float32))
        self._maps = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)
        self.counters = {}

    @classmethod
    def for_resize(cls, coarse_hw: tuple, out_hw: tuple, exact: bool = True) -> 'LogitsUpsampler':
        (h, w), (oh, ow) = coarse_hw, out_hw
        return cls(AxisMap.resize(oh, h), AxisMap.resize(ow, w), coarse_hw, exact)

    @classmethod
    def for_geometry(cls, coarse_hw: tuple, net_hw: tuple, content_hw: tuple, offset_yx: tuple,
                     out_hw: tuple, exact: bool = True) -> 'LogitsUpsampler':
        """Logits of a network input ``net_hw`` whose image content (``content_hw`` at ``offset_yx``, e.g.
        letterboxed) came from an ``out_hw`` image: sample them at that image's pixel centres."""
        axes = []
        for n_in, n_net, n_content, offset, n_out in zip(coarse_hw, net_hw, content_hw, offset_yx, out_hw):
            per_net = n_in / n_net
            axes.append(AxisMap.build(n_out, n_in, n_content / n_out * per_net, offset * per_net))
        return cls(axes[0], axes[1], coarse_hw, exact)

    def __call__(self, logits: np.ndarray, label_dtype=np.uint8, calibrated: np.ndarray | None = None) -> tuple:
        """(C, h, w) float32 logits -> (labels (H, W) ``label_dtype``, confidence (H, W) float32). ``calibrated``:
        the (C, h, w) logits whose max softmax is the confidence (e.g. ``logits`` divided by per-class
        temperatures, which can change the argmax), default ``logits``."""
        for name, value in (('logits', logits), ('calibrated logits', calibrated)):
            if value is not None and value.shape[1:] != self.coarse_hw:
                raise ValueError(f'{name} {value.shape[1:]} do not match the upsampler ({self.coarse_hw})')
        if logits.shape[0] <= self.FEW:
            coarse, conf = coarse_label_confidence(logits, calibrated)
            return self._labels(logits, coarse, None, label_dtype), self._enlarge(conf)
        by_pixel = pixel_rows(logits)   # (h * w, C): per-pixel rows along contiguous memory
        coarse = by_pixel.argmax(axis=1)
        if calibrated is None:   # the confidence's top logits are the argmax's
            scores, top = by_pixel, by_pixel.reshape(-1).take(np.arange(len(coarse)) * by_pixel.shape[1] + coarse)
        else:
            scores, top = pixel_rows(calibrated), None
        labels = self._labels(logits, coarse.reshape(self.coarse_hw), by_pixel, label_dtype)
        return labels, self._enlarge(rows_max_softmax(scores, top).reshape(self.coarse_hw))

    def _labels(self, logits, coarse, by_pixel, label_dtype) -> np.ndarray:
        """The labels at the output grid from the coarse argmax ``coarse`` (h, w); ``by_pixel``: the logits'
        per-pixel rows with many classes, else None."""
        many = by_pixel is not None
        down, right = self._down, self._right
        ambiguous = ((coarse != coarse[down]) | (coarse != coarse[:, right]) | (coarse != coarse[down][:, right]))
        labels = self._fill(coarse, label_dtype)
        # cells no output pixel falls in (outside a letterbox's content) need nothing
        ambiguous &= (self._row_blocks.count > 0)[:, None] & (self._col_blocks.count > 0)[None, :]
        cell_y, cell_x = np.nonzero(ambiguous)
        self.counters = {'ambiguous_cells': len(cell_y), 'max_candidates': 0,
                         'ambiguous_fraction': float(self._row_blocks.count[cell_y] @ self._col_blocks.count[cell_x])
                         / (self.out_hw[0] * self.out_hw[1])}
        if not len(cell_y):
            return labels
        ry, rx, w = down[cell_y], right[cell_x], self.coarse_hw[1]
        pix = np.stack([cell_y * w + cell_x, cell_y * w + rx, ry * w + cell_x, ry * w + rx])   # (4, n) corners
        # from here on a "cell" is a block entry: a cell at a clamped edge is one entry per part of its run
        cell_y, cell_x, pix = self._entries(cell_y, cell_x, pix)
        if many:
            # most cells are settled by their corners' two best classes, without looking at all C classes
            settled = self._refine_top_two(labels, by_pixel, coarse.reshape(-1), pix, cell_y, cell_x)
            cell_y, cell_x, pix = cell_y[~settled], cell_x[~settled], pix[:, ~settled]
            if not len(cell_y):
                return labels
            corners = by_pixel[pix]                         # (4, n, C)
        else:
            flat = logits.reshape(logits.shape[0], -1)
            corners = np.stack([np.take(flat, p, axis=1) for p in pix]).transpose(0, 2, 1).copy()
        highest = corners.max(axis=0)                       # (n, C): each class's best corner
        alive, leader = self._contenders(corners, prune_dominated=many)
        if many:
            alive[np.arange(len(leader)), leader] = True
            highest = np.where(alive, highest, -np.inf)     # _refine takes each cell's top classes by this
        needed = alive.sum(axis=1)
        lower = 0
        # the few cells left after the two-best pass: in one group (a group costs more than they do)
        for k in (logits.shape[0],) if many else (*self.CANDIDATE_GROUPS, logits.shape[0]):
            k = min(k, logits.shape[0])
            group = np.nonzero((needed > lower) & (needed <= k))[0]
            lower = k
            if len(group):
                self._refine(labels, corners[:, group], highest[group], cell_y[group], cell_x[group],
                             int(needed[group].max()))
            if k == logits.shape[0]:
                break
        self.counters['max_candidates'] = max(self.counters['max_candidates'], int(needed.max()))
        return labels

    def _entries(self, cell_y, cell_x, pix) -> tuple:
        """Coarse cells -> their block entries (row entry, column entry) and each entry's (4, E) corners."""
        rows, cols = self._row_blocks, self._col_blocks
        ny, nx = rows.entries[cell_y], cols.entries[cell_x]
        if (ny == 1).all() and (nx == 1).all():
            return rows.first[cell_y], cols.first[cell_x], pix
        per_cell = ny * nx
        cell = np.repeat(np.arange(len(cell_y)), per_cell)
        k = np.arange(len(cell)) - (np.cumsum(per_cell) - per_cell)[cell]
        return rows.first[cell_y][cell] + k // nx[cell], cols.first[cell_x][cell] + k % nx[cell], pix[:, cell]

    def _refine_top_two(self, labels, by_pixel, coarse, pix, cell_y, cell_x) -> np.ndarray:
        """Exact labels in the cells whose winners are provably among their 4 corners' two best classes; returns
        which cells (bool (n,)) were done. A class outside a cell's 8 slots is at most the third best value at each
        corner, so at any point at most the bilinear interpolation of those third best values: where the slots'
        interpolated top is strictly above that bound at every pixel of the cell, the slots decide alone. Not
        ``exact``: the slots decide every cell, unchecked (all done).
        ``by_pixel``: the (h * w, C) logits; ``coarse``: their argmax (h * w,)."""
        hw, num_classes = by_pixel.shape
        used = np.zeros(hw, bool)
        used[pix.reshape(-1)] = True
        uniq = np.flatnonzero(used)                                           # the distinct corners ...
        inv = (np.cumsum(used) - 1)[pix]                                      # ... and each corner's index among them
        vals = by_pixel.take(uniq, axis=0)                                    # (m, C)
        rows = np.arange(len(uniq))
        best = [coarse[uniq]]                                                 # the best class: the coarse argmax
        vals[rows, best[0]] = -np.inf
        best.append(vals.argmax(axis=1))                                      # argmax over the contiguous axis
        bound = None
        if self.exact:
            vals[rows, best[1]] = -np.inf
            bound = vals.max(axis=1)[inv]                                     # (4, n) third best per corner
        slots = np.concatenate([best[0][inv], best[1][inv]]).T               # (n, 8) class ids
        corners = by_pixel.reshape(-1).take(pix[:, :, None] * num_classes + slots[None])   # (4, n, 8)
        # the candidates: slots whose best corner reaches the slots' guaranteed top (the leader's worst corner) and
        # that are not below the leader at all 4 corners (the others never win), each class once, in ascending
        # class order (ties go to the lowest id); rows padded with their first candidate (it cannot overtake itself)
        slots = np.where(self._contenders(corners)[0], slots, num_classes)
        slots.sort(axis=1)
        slots[:, 1:][slots[:, 1:] == slots[:, :-1]] = num_classes
        slots.sort(axis=1)
        needed = (slots < num_classes).sum(axis=1)
        slots = np.where(slots < num_classes, slots, slots[:, :1])
        done = np.zeros(len(cell_y), bool)
        lower = 0
        for k in (1, *self.CANDIDATE_GROUPS):
            group = np.nonzero((needed > lower) & (needed <= k))[0]
            lower = k
            if len(group):
                cand = slots[group, :k]
                values = by_pixel.reshape(-1).take(pix[:, group, None] * num_classes + cand[None])   # (4, g, k)
                done[group] = self._evaluate(labels, cand, values, cell_y[group], cell_x[group],
                                             None if bound is None else bound[:, group])
        self.counters['max_candidates'] = int(needed[done].max()) if done.any() else 0
        return done

    def _enlarge(self, conf: np.ndarray) -> np.ndarray:
        """A coarse one-channel float32 image bilinearly to the output (cv2.resize on a plain resize, else a
        fixed-point remap)."""
        if self._plain_resize:
            return cv2.resize(conf, self.out_hw[::-1], interpolation=cv2.INTER_LINEAR)
        return cv2.remap(conf, *self._maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _fill(self, coarse: np.ndarray, label_dtype) -> np.ndarray:
        """The coarse labels enlarged to the output (C order, as the consumers' cv2 calls want). Outside the
        ambiguous cells the four corners agree, so any corner of a pixel's cell gives its label: cv2's pixel-centre
        nearest picks one of them on a plain resize; otherwise the top-left corner."""
        if self._plain_resize and np.dtype(label_dtype) in (np.uint8, np.uint16):
            return cv2.resize(coarse.astype(label_dtype), self.out_hw[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        return coarse.astype(label_dtype).take(self.rows.i0, axis=0).take(self.cols.i0, axis=1)

    def _refine(self, labels, corners, highest, cell_y, cell_x, k):
        """Exact labels in the given cells from their (4, n, C) corner logits, over each cell's top k classes."""
        n = len(cell_y)
        if k < corners.shape[2]:
            # the k best classes per cell (k argmax passes: faster than argpartition for the usual k <= 8), in
            # ascending class order: on an exact tie the first candidate stays the winner, the lowest class id as
            # in argmax (classes outside a cell's candidates are strictly below its top: they never tie)
            cand = np.empty((n, k), np.int64)
            highest, rows = highest.copy(), np.arange(n)
            for j in range(k):
                cand[:, j] = highest.argmax(axis=1)
                highest[rows, cand[:, j]] = -np.inf
            cand.sort(axis=1)
            corners = np.take_along_axis(corners, cand[None], axis=2)           # (4, n, k)
        else:
            cand = np.broadcast_to(np.arange(k)[None], (n, k))
        self._evaluate(labels, cand, corners, cell_y, cell_x)

    @staticmethod
    def _contenders(corners, prune_dominated=True) -> tuple:
        """(4, n, k) corner values of n cells -> (bool (n, k): the classes that can win somewhere in each cell,
        (n,) each cell's leader: the class with the highest worst corner). A class whose best corner is below the
        leader's worst never wins (the interpolated top never falls below that); with ``prune_dominated`` neither
        does one below the leader at all 4 corners (an interpolation is a convex combination of the corners)."""
        lowest = corners.min(axis=0)
        leader = lowest.argmax(axis=1)
        alive = corners.max(axis=0) >= np.take_along_axis(lowest, leader[:, None], axis=1)
        if prune_dominated:
            alive &= ~(corners < np.take_along_axis(corners, leader[None, :, None], axis=2)).all(axis=0)
        return alive, leader

    def _scatter(self, labels, cell_y, cell_x, values):
        """Write (n, By, Bx) ``values`` into the C-ordered ``labels`` at the block entries ``cell_y`` x ``cell_x``
        (flat indices: half the time of indexing with a row and a column array)."""
        index = self._row_offsets[cell_y][:, :, None] + self._col_blocks.index[cell_x][:, None, :]
        labels.reshape(-1)[index] = values

    def _interpolate(self, corners, cell_y, cell_x) -> np.ndarray:
        """(4, n, k) corner values (top-left, top-right, bottom-left, bottom-right) of n block entries -> their
        bilinear interpolation at each entry's output pixels, (n, k, By, Bx) float32: along x, then along y, as two
        batched 2x2 matrix products (3-10x faster than elementwise arithmetic on (n, By, Bx) arrays, whose
        innermost axis is only a block wide)."""
        n, k = corners.shape[1:]
        quads = corners.transpose(1, 2, 0).reshape(n, k, 2, 2)
        return self._weights_y[cell_y][:, None] @ (quads @ self._weights_x[cell_x][:, None])

    def _evaluate(self, labels, cand, corners, cell_y, cell_x, bound=None):
        """Labels in the given cells: the argmax over each cell's candidate classes ``cand`` (n, k), ascending,
        of their bilinearly interpolated (4, n, k) corner logits. With ``bound`` ((4, n) corner values):
        returns whether (bool (n,)) the candidates' top is strictly above the bound's interpolation at every pixel
        of each cell; without: True (the candidates decided every cell)."""
        n, k = cand.shape
        if bound is not None:
            corners = np.concatenate([corners, bound[:, :, None]], axis=2)
        values = self._interpolate(corners, cell_y, cell_x)                    # (n, k (+1), By, Bx)
        cand = cand.astype(labels.dtype)
        # a running max over the candidates (faster than an argmax over their axis, even for 24 of them); the
        # winner's index as a wrapping uint8 (4x faster than a masked copy of its class; 16 bits past 256
        # candidates); equal values keep the first (the lowest class)
        best = values[:, 0].copy()
        index_type = np.uint8 if k <= 256 else np.uint16
        slot = np.zeros(best.shape, index_type)
        for j in range(1, k):
            better = np.greater(values[:, j], best).view(np.uint8)
            np.maximum(best, values[:, j], out=best)
            slot += better * (index_type(j) - slot)   # j where better, unchanged elsewhere
        winner = cand.reshape(-1).take(slot + (np.arange(n) * k)[:, None, None])
        self._scatter(labels, cell_y, cell_x, winner)
        if bound is None:
            return True
        return (best > values[:, k]).reshape(n, -1).all(axis=1)
