"""Plan -> RGB image renderer (pure numpy, exact palette colours, no anti-aliasing).

Geometry: the image is split into ``GRID x GRID`` cells (integer pixel
edges ``round(i * W / GRID)``); an object is drawn inside its cell shrunk by a
1-pixel margin, so objects in different cells never touch.  Each object
occupies an integer ``s x s`` pixel box: with an ``rng``, ``s`` is uniform in
``[min(side, max(7, round(0.8 * side))), side]`` (``side``: the inner cell
side; so 7..9 pixels at 32x32: smaller discs pixelate to near-squares) and the box's integer offset uniform where it fits; without one,
``s = side - 1`` centred.  Shapes: filled disc, square, upward isosceles
triangle (base = height = ``s``); a pixel is painted when its centre lies
inside.  Integer boxes keep the pixelated shapes few and distinct.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .plan import Plan, canonical_plan
from .spec import Prompt
from .vocab import BACKGROUND, COLORS, GRID

__all__ = ["cell_bounds", "render_plan", "render_plans", "render_prompts"]

_MIN_SIZE = 0.8
_MIN_PIXELS = 7
_MARGIN = 1


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def cell_bounds(n: int) -> np.ndarray:
    """Pixel edges of the grid along an axis of ``n`` pixels: int array (GRID + 1,)."""
    return np.round(np.arange(GRID + 1) * n / GRID).astype(np.int64)


def _mask(shape: str, h: int, w: int, cx: float, cy: float, s: float) -> np.ndarray:
    """Boolean (h, w) mask of ``shape`` of size ``s`` centred at (cx, cy), in local pixels."""
    px = np.arange(w) + 0.5 - cx
    py = (np.arange(h) + 0.5 - cy)[:, None]
    half = s / 2.0
    if shape == "circle":
        return px * px + py * py <= half * half
    if shape == "square":
        return (np.abs(px) <= half) & (np.abs(py) <= half)
    if shape == "triangle":  # apex at (0, -half), base on y = +half
        return (py <= half) & (np.abs(px) <= (py + half) / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def render_plan(plan: Plan, rng: np.random.Generator | None = None,
                size: int | tuple[int, int] = 32, noise: float = 0.0) -> np.ndarray:
    """Render one plan to a uint8 RGB image of shape (H, W, 3).

    ``rng``: jitters size/position (None: deterministic, centred).  ``noise``:
    std of additive Gaussian pixel noise in 0..255 units (default 0: colours
    stay exactly on the palette; needs ``rng``)."""
    h, w = _hw(size)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    xs, ys = cell_bounds(w), cell_bounds(h)
    for o in plan:
        x0, x1 = xs[o.x] + _MARGIN, xs[o.x + 1] - _MARGIN
        y0, y1 = ys[o.y] + _MARGIN, ys[o.y + 1] - _MARGIN
        side = min(x1 - x0, y1 - y0)
        if rng is None:
            s = max(side - 1, 1)
            ox, oy = (x1 - x0 - s) // 2, (y1 - y0 - s) // 2
        else:
            s = int(rng.integers(min(side, max(_MIN_PIXELS, round(_MIN_SIZE * side))), side + 1))
            ox = int(rng.integers(0, x1 - x0 - s + 1))
            oy = int(rng.integers(0, y1 - y0 - s + 1))
        m = _mask(o.shape, s, s, s / 2.0, s / 2.0, s)
        img[y0 + oy:y0 + oy + s, x0 + ox:x0 + ox + s][m] = COLORS[o.color]
    if noise > 0:
        if rng is None:
            raise ValueError("noise > 0 needs an rng")
        img = np.clip(img + rng.normal(0.0, noise, img.shape), 0, 255).astype(np.uint8)
    return img


def render_plans(plans: Sequence[Plan], rng: np.random.Generator | None = None,
                 size: int | tuple[int, int] = 32, noise: float = 0.0) -> np.ndarray:
    """Render a batch of plans: uint8 (B, H, W, 3); plans are drawn in order from one ``rng``."""
    h, w = _hw(size)
    out = np.empty((len(plans), h, w, 3), dtype=np.uint8)
    for i, p in enumerate(plans):
        out[i] = render_plan(p, rng, (h, w), noise)
    return out


def render_prompts(prompts: Sequence[Prompt], rng: np.random.Generator,
                   size: int | tuple[int, int] = 32, noise: float = 0.0,
                   exclude_pairs=()) -> tuple[np.ndarray, list[Plan]]:
    """Ground truth for prompts: ``(images uint8 (B, H, W, 3), plans)`` where
    ``plans[i] = canonical_plan(prompts[i], rng, exclude_pairs)``."""
    plans = [canonical_plan(p, rng, exclude_pairs) for p in prompts]
    return render_plans(plans, rng, size, noise), plans
