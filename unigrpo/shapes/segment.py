"""Object detection for the verifier: palette segmentation, connected
components and shape features, vectorised over a whole batch (pure numpy).

Pipeline: every pixel goes to its nearest palette colour if within
``color_tol`` in every channel (max-norm, channels in [0, 1]; the palette
and the black background are RGB cube corners), else background; 4-connected
same-colour components are found with a batched union-find (hooking + pointer
jumping, no Python loop over pixels or images); components smaller than
``min_area`` pixels are dropped as noise; the rest are classified by bounding
box fill ratio (square ~1, disc ~pi/4, triangle ~1/2), top/bottom mass ratio
(upward triangle ~1/3, others ~1) and aspect ratio; anything else is
``unknown`` (-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import COLOR_NAMES, PALETTE, SHAPES

__all__ = ["Detections", "as_float_images", "classify_pixels", "label_components", "detect",
           "near_miss_credit", "COLOR_TOL", "MIN_AREA"]

#: default per-channel colour tolerance (< 0.5: blurred edge pixels halfway
#: between a colour and the background stay background).
COLOR_TOL = 0.45
#: default minimum component area in pixels (smaller ones are noise); the
#: smallest rendered object (7-pixel triangle) has 25.
MIN_AREA = 6

#: shape ids: index into ``SHAPES``; -1 = unclassifiable blob.
_CIRCLE, _SQUARE, _TRIANGLE = (SHAPES.index(s) for s in ("circle", "square", "triangle"))
#: RGB corner code (4r + 2g + b for binarised channels) -> class (0 background, k + 1 colour k).
_CODE_TO_CLASS = np.zeros(8, np.uint8)
for _k, _rgb in enumerate(PALETTE):
    _CODE_TO_CLASS[int(_rgb[0] > 127) * 4 + int(_rgb[1] > 127) * 2 + int(_rgb[2] > 127)] = _k + 1


def as_float_images(images) -> np.ndarray:
    """(B, H, W, 3) or (H, W, 3) uint8 [0, 255] / float [0, 1] (numpy or CPU
    torch) -> float32 (B, H, W, 3) in [0, 1]."""
    if hasattr(images, "detach"):  # torch tensor
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) or (H, W, 3) channels-last, got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) * np.float32(1.0 / 255.0)
    return x.astype(np.float32, copy=False)


def classify_pixels(images, color_tol: float = COLOR_TOL) -> np.ndarray:
    """Palette index per pixel: uint8 (B, H, W), 0 = background, k + 1 =
    ``COLOR_NAMES[k]``.

    The palette and the black background are corners of the RGB cube, so the
    nearest reference in max-norm is each channel rounded at 0.5; a pixel gets
    that colour iff it is a palette colour and every channel is within
    ``color_tol`` of it (``color_tol < 0.5`` leaves ambiguous, e.g. blurred
    edge, pixels as background; 0.5 accepts every pixel)."""
    x = as_float_images(images)
    hi = x > 0.5
    code = (hi[..., 0] * np.uint8(4) + hi[..., 1] * np.uint8(2) + hi[..., 2]).astype(np.uint8)
    sure = (np.abs(x - hi) < color_tol).all(-1)
    return np.where(sure, _CODE_TO_CLASS[code], 0).astype(np.uint8)


def label_components(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected components of equal non-zero values of ``cls`` (B, H, W),
    never crossing images.  Returns ``(fg, comp, first)``: ``fg`` int64 (M,) flat
    indices of the non-zero pixels in raster order, ``comp`` int64 (M,) their
    component id in 0..K-1, ``first`` int64 (K,) the position in ``fg`` of each
    component's first (raster-order) pixel; ids follow ``first``, so are sorted
    by image."""
    b, h, w = cls.shape
    flat = cls.reshape(-1)
    fg = np.flatnonzero(flat)
    m = fg.size
    if m == 0:
        return fg, np.zeros(0, np.int64), np.zeros(0, np.int64)
    inv = np.full(flat.size, -1, np.int64)
    inv[fg] = np.arange(m)
    c3 = cls.reshape(b, h, w)
    horiz = (c3[:, :, 1:] == c3[:, :, :-1]) & (c3[:, :, :-1] > 0)
    vert = (c3[:, 1:, :] == c3[:, :-1, :]) & (c3[:, :-1, :] > 0)
    ph = np.flatnonzero(horiz)  # index into (b, h, w-1)
    ph = ph + ph // (w - 1) if w > 1 else ph
    pv = np.flatnonzero(vert)  # index into (b, h-1, w)
    pv = pv + (pv // ((h - 1) * w)) * w if h > 1 else pv
    u = inv[np.concatenate([ph, pv])]
    v = inv[np.concatenate([ph + 1, pv + w])]
    lab = np.arange(m)
    while u.size:
        ru, rv = lab[u], lab[v]
        keep = ru != rv
        if not keep.any():
            break
        u, v, ru, rv = u[keep], v[keep], ru[keep], rv[keep]
        np.minimum.at(lab, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:  # pointer jumping: every label becomes its root
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt
    is_root = lab == np.arange(m)
    return fg, (np.cumsum(is_root) - 1)[lab], np.flatnonzero(is_root)


@dataclass
class Detections:
    """Components of a batch, sorted by image; row ``i`` of every array is one
    component and image ``j``'s rows are ``offsets[j]:offsets[j + 1]``.

    ``image, color`` (index into COLOR_NAMES), ``shape`` (index into SHAPES, -1
    unknown), ``area``: int64 (N,); ``cx, cy`` (centroid, pixels), ``fill``,
    ``top_bottom``, ``aspect`` (w/h): float64 (N,); ``bbox``: int64 (N, 4) as
    x0, y0, x1, y1 inclusive; ``offsets``: int64 (B + 1,); ``size``: (H, W)."""

    image: np.ndarray
    color: np.ndarray
    shape: np.ndarray
    area: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    fill: np.ndarray
    top_bottom: np.ndarray
    aspect: np.ndarray
    bbox: np.ndarray
    offsets: np.ndarray
    size: tuple[int, int]

    def describe(self, j: int) -> list[str]:
        """Human-readable objects of image ``j`` (for logging)."""
        out = []
        for i in range(self.offsets[j], self.offsets[j + 1]):
            s = SHAPES[self.shape[i]] if self.shape[i] >= 0 else "unknown"
            out.append(f"{COLOR_NAMES[self.color[i]]} {s} at ({self.cx[i]:.1f}, {self.cy[i]:.1f})"
                       f" area {self.area[i]}")
        return out


#: shape-rule thresholds (tuned on renders blurred with a 3x3 binomial kernel
#: plus Gaussian pixel noise, see tests/tasks/test_shapes_verifier.py).
TB_TRIANGLE = 0.72  # top/bottom mass ratio below this: upward triangle
FILL_SQUARE = 0.87  # bbox fill at or above this (and symmetric): square
FILL_MIN = 0.45  # below this nothing is a shape (lines, rings, scattered noise)
FILL_CIRCLE_MIN = 0.6


def _could_be_shape(w, h, fill) -> np.ndarray:
    """Components some shape rule may accept: not tiny, elongated or sparse."""
    aspect = w / h
    return (w >= 3) & (h >= 3) & (aspect > 0.6) & (aspect < 1.67) & (fill >= FILL_MIN)


def _classify_shapes(w, h, fill, tb) -> np.ndarray:
    """Shape id per component (-1 unknown) from bbox size, fill ratio and
    top/bottom mass ratio.  Clean renders: square fill 1, disc 0.76-0.85,
    triangle 0.51-0.57 with top/bottom 0.29-0.4 (discs and squares 1)."""
    sane = _could_be_shape(w, h, fill)
    symmetric = (tb >= TB_TRIANGLE) & (tb <= 1.0 / TB_TRIANGLE)
    triangle = sane & (tb < TB_TRIANGLE) & (fill < FILL_SQUARE)
    square = sane & symmetric & (fill >= FILL_SQUARE)
    circle = sane & symmetric & (fill >= FILL_CIRCLE_MIN) & (fill < FILL_SQUARE)
    out = np.full(w.shape, -1, np.int64)
    out[circle], out[square], out[triangle] = _CIRCLE, _SQUARE, _TRIANGLE
    return out


#: near-miss credit: feature distance (fill ratio, top/bottom ratio) at which it reaches 0.
NEAR_FILL, NEAR_TB = 0.1, 0.25


def near_miss_credit(det: Detections) -> np.ndarray:
    """float64 (N, 3): how nearly each detection is each shape, for dense rewards.

    1 for the shape the hard rules give; for the others, 0.5 * (1 - d) where d
    is the detection's distance to that shape's region in feature space (fill
    in units of ``NEAR_FILL``, top/bottom in units of ``NEAR_TB``), 0 from
    d >= 1 on.  A square drawn with rounded corners (fill 0.8, a circle by the
    rules) thus earns 0.15 square credit, and 0.45 at fill 0.86: a reward that
    grows with the feature the strict verifier thresholds.  Blobs no rule could
    call a shape (tiny, elongated, sparse) earn nothing."""
    fill, tb = det.fill, det.top_bottom
    w, h = det.bbox[:, 2] - det.bbox[:, 0] + 1, det.bbox[:, 3] - det.bbox[:, 1] + 1
    sane = _could_be_shape(w, h, fill)
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    off_sym = (relu(TB_TRIANGLE - tb) + relu(tb - 1.0 / TB_TRIANGLE)) / NEAR_TB
    dist = np.empty((fill.size, 3))
    dist[:, _SQUARE] = relu(FILL_SQUARE - fill) / NEAR_FILL + off_sym
    dist[:, _CIRCLE] = (relu(FILL_CIRCLE_MIN - fill) + relu(fill - FILL_SQUARE)) / NEAR_FILL + off_sym
    dist[:, _TRIANGLE] = relu(tb - TB_TRIANGLE) / NEAR_TB + relu(fill - FILL_SQUARE) / NEAR_FILL
    credit = np.where(sane[:, None], 0.5 * relu(1.0 - dist), 0.0)
    hard = det.shape >= 0
    credit[np.flatnonzero(hard), det.shape[hard]] = 1.0
    return credit


def detect(images, color_tol: float = COLOR_TOL, min_area: int = MIN_AREA) -> Detections:
    """Detect coloured objects in images (see :func:`as_float_images` for the
    accepted input).  Components with fewer than ``min_area`` pixels are dropped."""
    cls = classify_pixels(images, color_tol)
    b, h, w = cls.shape
    fg, comp, first = label_components(cls)
    k = first.size
    img_idx, rem = np.divmod(fg, h * w)
    y, x = np.divmod(rem, w)
    area = np.bincount(comp, minlength=k)
    y0 = y[first]  # the first raster pixel is on the top row
    y1 = np.full(k, -1, np.int64); np.maximum.at(y1, comp, y)
    x0 = np.full(k, w, np.int64); np.minimum.at(x0, comp, x)
    x1 = np.full(k, -1, np.int64); np.maximum.at(x1, comp, x)
    cx = np.bincount(comp, weights=x, minlength=k) / np.maximum(area, 1) + 0.5
    cy = np.bincount(comp, weights=y, minlength=k) / np.maximum(area, 1) + 0.5
    ymid = (y0 + y1) / 2.0
    top = np.bincount(comp, weights=(y < ymid[comp]), minlength=k)
    bottom = np.bincount(comp, weights=(y > ymid[comp]), minlength=k)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    fill = area / np.maximum(bw * bh, 1)
    tb = top / np.maximum(bottom, 1)
    keep = area >= min_area
    image = img_idx[first]
    color = cls.reshape(-1)[fg[first]].astype(np.int64) - 1
    shape = _classify_shapes(bw, bh, fill, tb)
    sel = np.flatnonzero(keep)
    image = image[sel]
    return Detections(
        image=image, color=color[sel], shape=shape[sel], area=area[sel],
        cx=cx[sel], cy=cy[sel], fill=fill[sel], top_bottom=tb[sel], aspect=(bw / bh)[sel],
        bbox=np.stack([x0, y0, x1, y1], 1)[sel],
        offsets=np.searchsorted(image, np.arange(b + 1)), size=(h, w),
    )
