"""Renderer: shapes, dtypes, determinism, geometry."""

import numpy as np
import pytest

from unigrpo import shapes as S
from unigrpo.shapes.render import cell_bounds
from unigrpo.shapes.vocab import PALETTE

FULL = S.parse_plan(" ; ".join(
    f"{S.COLOR_NAMES[(x + 3 * y) % 6]} {S.SHAPES[(x + y) % 3]} @ {x} {y}"
    for y in range(3) for x in range(3)))


def test_output_shape_dtype_and_palette():
    img = S.render_plan(FULL, np.random.default_rng(0))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    colours = {tuple(c) for c in img.reshape(-1, 3).tolist()}
    assert colours <= {(0, 0, 0)} | {tuple(c) for c in PALETTE.tolist()}
    assert S.render_plan(S.Plan()).max() == 0


def test_deterministic():
    a = S.render_plan(FULL, np.random.default_rng(3))
    b = S.render_plan(FULL, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert np.array_equal(S.render_plan(FULL), S.render_plan(FULL))
    assert not np.array_equal(a, S.render_plan(FULL, np.random.default_rng(4)))


def test_batched_matches_single():
    plans = [S.canonical_plan(p, np.random.default_rng(i)) for i, p in enumerate(S.all_prompts()[:20])]
    batch = S.render_plans(plans, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    assert batch.shape == (20, 32, 32, 3) and batch.dtype == np.uint8
    for i, p in enumerate(plans):
        assert np.array_equal(batch[i], S.render_plan(p, rng))


@pytest.mark.parametrize("seed", range(5))
def test_objects_stay_inside_their_cells_with_margin(seed):
    img = S.render_plan(FULL, np.random.default_rng(seed))
    e = cell_bounds(32)
    for o in FULL:
        colour = np.array(S.COLORS[o.color])
        mask = (img == colour).all(-1)
        cell = np.zeros_like(mask)
        cell[e[o.y] + 1:e[o.y + 1] - 1, e[o.x] + 1:e[o.x + 1] - 1] = True
        mine = mask & cell
        assert mine.sum() >= 20  # at least a 7x7 triangle
        # nothing of this colour in the 1-pixel cell border
        border = np.zeros_like(mask)
        border[e[o.y]:e[o.y + 1], e[o.x]:e[o.x + 1]] = True
        assert not (mask & border & ~cell).any()


def test_other_sizes_and_noise():
    img = S.render_plan(FULL, np.random.default_rng(0), size=(48, 64))
    assert img.shape == (48, 64, 3)
    noisy = S.render_plan(FULL, np.random.default_rng(0), noise=10.0)
    assert noisy.dtype == np.uint8 and not np.array_equal(noisy, S.render_plan(FULL, np.random.default_rng(0)))
    with pytest.raises(ValueError):
        S.render_plan(FULL, None, noise=10.0)


def test_render_prompts():
    prompts = S.all_prompts("position")
    imgs, plans = S.render_prompts(prompts, np.random.default_rng(0))
    assert imgs.shape == (len(prompts), 32, 32, 3)
    assert all(S.plan_satisfies(pl, p) for pl, p in zip(plans, prompts))
