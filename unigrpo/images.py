"""PNG output: captioned image grids (samples) and line plots (training curves).

Pillow only for grids (no fonts to download: Pillow's built-in bitmap font);
matplotlib (Agg) for curves."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .io import atomic_path

__all__ = ["image_grid", "save_image_grid", "save_curves"]


def image_grid(images, captions: Sequence[str] | None = None, cols: int = 8, scale: int = 3,
               caption_chars: int = 22, caption_lines: int = 4, pad: int = 4):
    """Tile images into one captioned ``PIL.Image``.

    images: (N, H, W, 3) uint8 (numpy or torch); captions: N strings (wrapped
    at ``caption_chars`` characters, at most ``caption_lines`` lines, under
    each tile); ``scale``: nearest-neighbour upscaling of each tile."""
    from PIL import Image, ImageDraw, ImageFont

    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    if n == 0:
        raise ValueError("no images to tile")
    if captions is not None and len(captions) != n:
        raise ValueError(f"{n} images but {len(captions)} captions")
    if cols < 1 or scale < 1:
        raise ValueError(f"cols and scale must be >= 1, got {cols}, {scale}")
    font = ImageFont.load_default()
    line_h = 11
    cap_h = (caption_lines * line_h + pad) if captions is not None else 0
    tw, th = w * scale, h * scale
    cell_w = max(tw, caption_chars * 6) + 2 * pad
    cell_h = th + cap_h + 2 * pad
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * cell_w + pad, r * cell_h + pad
        tile = Image.fromarray(images[i]).resize((tw, th), Image.NEAREST)
        canvas.paste(tile, (x0 + (cell_w - 2 * pad - tw) // 2, y0))
        if captions is not None:
            lines = textwrap.wrap(captions[i], caption_chars)[:caption_lines]
            for k, line in enumerate(lines):
                draw.text((x0, y0 + th + pad // 2 + k * line_h), line, fill=(0, 0, 0), font=font)
    return canvas


def save_image_grid(path: str | Path, images, captions: Sequence[str] | None = None, **kwargs) -> Path:
    """:func:`image_grid` written to ``path`` (PNG); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image_grid(images, captions, **kwargs).save(tmp, format="PNG")
    return path


def save_curves(path: str | Path, series: Mapping[str, Sequence[float]], x: Sequence[float] | None = None,
                title: str = "", xlabel: str = "step", smooth: int = 1, logy: bool = False) -> Path:
    """Line plot of named series (e.g. training losses) to a PNG; ``smooth``:
    moving-average window drawn over the raw (faint) curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=np.float64)
        xs = np.arange(1, len(ys) + 1) if x is None else np.asarray(x)
        if smooth > 1 and len(ys) >= smooth:
            line, = ax.plot(xs, ys, alpha=0.25)
            k = np.ones(smooth) / smooth
            ax.plot(xs[smooth - 1:], np.convolve(ys, k, mode="valid"), color=line.get_color(), label=name)
        else:
            ax.plot(xs, ys, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
