"""Verifier: ground truth scores 1, corruptions score low, detection internals."""

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unigrpo import shapes as S
from unigrpo.shapes.segment import classify_pixels, label_components


def _blur(imgs):
    """3x3 binomial blur of uint8 images -> float32 in [0, 1]."""
    x = imgs.astype(np.float32) / 255.0
    k = (0.25, 0.5, 0.25)
    p = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="edge")
    x = sum(k[i] * p[:, i:i + x.shape[1]] for i in range(3))
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)), mode="edge")
    return sum(k[i] * p[:, :, i:i + x.shape[2]] for i in range(3))


def _edit(prompts, seed, fn):
    """Canonical plans edited by ``fn(plan, prompt, rng) -> Plan | None`` (None: skip)."""
    rng = np.random.default_rng(seed)
    kept, plans = [], []
    for p in prompts:
        plan = fn(S.canonical_plan(p, rng), p, rng)
        if plan is not None:
            kept.append(p)
            plans.append(plan)
    return kept, S.render_plans(plans, rng)


def _replace(plan, i, **kw):
    objs = list(plan.objects)
    o = objs[i]
    objs[i] = S.PlanObject(kw.get("shape", o.shape), kw.get("color", o.color),
                           kw.get("x", o.x), kw.get("y", o.y))
    return S.Plan(tuple(objs))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ground_truth_heldout_scores_one(seed):
    sp = S.make_split(seed)
    imgs, _ = S.render_prompts(sp.heldout, np.random.default_rng(100 + seed))
    strict, bd = S.score(imgs, sp.heldout)
    assert strict.dtype == np.float32 and strict.shape == (len(sp.heldout),)
    assert strict.mean() >= 0.99, [bd.describe(i) for i in np.flatnonzero(strict < 1)[:3]]
    shaped, _ = S.score(imgs, sp.heldout, mode="shaped")
    assert shaped.mean() >= 0.99


def test_ground_truth_all_prompts_uint8_float_and_torch():
    prompts = S.all_prompts()
    imgs, _ = S.render_prompts(prompts, np.random.default_rng(5))
    s_u8, bd = S.score(imgs, prompts)
    assert s_u8.mean() >= 0.99
    s_f, _ = S.score(imgs.astype(np.float32) / 255.0, prompts)
    assert np.array_equal(s_u8, s_f)
    torch = pytest.importorskip("torch")
    s_t, _ = S.score(torch.from_numpy(imgs), prompts)
    assert np.array_equal(s_u8, s_t)
    summary = bd.summary()
    assert summary["strict"] >= 0.99 and all(f"strict/{c}" in summary for c in S.CATEGORIES)


@pytest.mark.parametrize("noise", [0.03, 0.08])
def test_robust_to_blur_and_noise(noise):
    prompts = S.all_prompts()
    rng = np.random.default_rng(11)
    imgs, _ = S.render_prompts(prompts, rng)
    x = np.clip(_blur(imgs) + rng.normal(0, noise, imgs.shape), 0, 1).astype(np.float32)
    strict, _ = S.score(x, prompts)
    assert strict.mean() >= 0.97


def test_larger_images():
    prompts = S.all_prompts()[::5]
    imgs, _ = S.render_prompts(prompts, np.random.default_rng(0), size=64)
    assert S.score(imgs, prompts)[0].mean() >= 0.99


def _assert_low(prompts, imgs, max_shaped):
    strict, bd = S.score(imgs, prompts)
    assert len(prompts) > 20
    assert strict.max() == 0.0, bd.describe(int(strict.argmax()))
    assert bd.shaped.mean() <= max_shaped
    assert bd.shaped.max() < 1.0


def test_wrong_color_scores_low():
    def recolor(plan, p, rng):
        if not all(o.color for o in p.constraints.objects):
            return None
        i = int(rng.integers(len(plan)))
        others = [c for c in S.COLOR_NAMES if c != plan.objects[i].color]
        return _replace(plan, i, color=others[rng.integers(len(others))])
    _assert_low(*_edit(S.all_prompts(), 0, recolor), max_shaped=0.85)


def test_wrong_shape_scores_low():
    def reshape(plan, p, rng):
        i = int(rng.integers(len(plan)))
        others = [s for s in S.SHAPES if s != plan.objects[i].shape]
        return _replace(plan, i, shape=others[rng.integers(len(others))])
    _assert_low(*_edit(S.all_prompts(), 1, reshape), max_shaped=0.85)


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_count_scores_low(delta):
    def recount(plan, p, rng):
        objs = list(plan.objects)
        if delta < 0:
            objs.pop(int(rng.integers(len(objs))))
        else:
            used = {(o.x, o.y) for o in objs}
            free = [(x, y) for y in range(S.GRID) for x in range(S.GRID) if (x, y) not in used]
            x, y = free[rng.integers(len(free))]
            src = objs[rng.integers(len(objs))]
            objs.append(S.PlanObject(src.shape, src.color, x, y))
        return S.Plan(tuple(objs))
    _assert_low(*_edit(S.all_prompts(), 2, recount), max_shaped=0.85)


def test_counting_off_by_one_partial_credit():
    p = [q for q in S.all_prompts("counting") if q.text == "four squares"][0]
    imgs = S.render_plans([S.parse_plan("red square @ 0 0 ; red square @ 1 0 ; red square @ 2 0")])
    strict, bd = S.score(imgs, [p], mode="shaped")
    assert bd.strict[0] == 0 and strict[0] == pytest.approx(0.75)


def test_wrong_position_scores_low():
    def swap(plan, p, rng):
        a, b = plan.objects
        return S.Plan((S.PlanObject(a.shape, a.color, b.x, b.y), S.PlanObject(b.shape, b.color, a.x, a.y)))
    prompts = S.all_prompts("position") + S.all_prompts("mixed_riddle")
    kept, imgs = _edit(prompts, 3, swap)
    strict, bd = S.score(imgs, kept)
    assert strict.max() == 0.0
    assert all(c.passed == (c.kind != "relation") for cl in bd.clauses for c in cl)
    assert np.allclose(bd.shaped, 2 / 3)  # two count clauses hold, the relation fails


def test_blank_scores_zero():
    prompts = S.all_prompts()
    for fill in (0, 255):
        imgs = np.full((len(prompts), 32, 32, 3), fill, np.uint8)
        strict, bd = S.score(imgs, prompts, mode="shaped")
        assert strict.max() == 0.0 and bd.strict.max() == 0.0


def test_uniform_noise_scores_low():
    prompts = S.all_prompts()
    imgs = np.random.default_rng(0).integers(0, 256, (len(prompts), 32, 32, 3), dtype=np.uint8)
    strict, bd = S.score(imgs, prompts)
    assert strict.max() == 0.0
    assert bd.shaped.mean() < 0.1


def test_breakdown_contents():
    p = [q for q in S.all_prompts("color_attr") if q.text == "a red circle and a blue square"][0]
    img = S.render_plans([S.parse_plan("red circle @ 0 0 ; green square @ 2 2")])
    strict, bd = S.score(img, [p])
    names = [(c.name, c.passed) for c in bd.clauses[0]]
    assert names == [("count(red circle)=1", True), ("count(blue square)=1", False), ("exclusive", False)]
    assert strict[0] == 0.0 and bd.shaped[0] == pytest.approx(0.5 * 0.5)
    assert "green square" in bd.describe(0)
    assert bd.categories == ["color_attr"]
    with pytest.raises(ValueError):
        S.score(img, [p, p])
    with pytest.raises(ValueError):
        S.score(img.transpose(0, 3, 1, 2), [p])
    with pytest.raises(ValueError):
        S.score(img, [p], mode="lenient")


def test_detect_features_of_clean_shapes():
    img = S.render_plans([S.parse_plan("red circle @ 0 0 ; green square @ 1 1 ; blue triangle @ 2 2")])
    d = S.detect(img)
    assert d.offsets.tolist() == [0, 3]
    assert [S.SHAPES[i] for i in d.shape] == ["circle", "square", "triangle"]
    assert [S.COLOR_NAMES[i] for i in d.color] == ["red", "green", "blue"]
    assert d.fill[1] == 1.0 and 0.7 < d.fill[0] < 0.88 and d.fill[2] < 0.65


def _bfs_labels(cls):
    """Reference 4-connected labelling (per image, same value, non-zero)."""
    b, h, w = cls.shape
    lab = -np.ones(cls.shape, np.int64)
    n = 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if cls[i, y, x] == 0 or lab[i, y, x] >= 0:
                    continue
                lab[i, y, x] = n
                q = deque([(y, x)])
                while q:
                    cy, cx = q.popleft()
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < h and 0 <= nx < w and lab[i, ny, nx] < 0 \
                                and cls[i, ny, nx] == cls[i, cy, cx]:
                            lab[i, ny, nx] = n
                            q.append((ny, nx))
                n += 1
    return lab


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4),
       st.floats(0.2, 0.9), st.integers(0, 2**31 - 1))
def test_label_components_matches_bfs(b, h, w, k, density, seed):
    rng = np.random.default_rng(seed)
    cls = np.where(rng.random((b, h, w)) < density, rng.integers(1, k + 1, (b, h, w)), 0).astype(np.uint8)
    fg, comp, first = label_components(cls)
    ref = _bfs_labels(cls).reshape(-1)
    assert np.array_equal(fg, np.flatnonzero(ref >= 0))
    assert np.array_equal(comp, ref[fg])  # both number components by first pixel
    firsts = [np.flatnonzero(comp == c)[0] for c in range(int(comp.max()) + 1)] if fg.size else []
    assert first.tolist() == [int(i) for i in firsts]


def test_label_components_snake():
    """A long serpentine component (worst case for label propagation) is one component."""
    cls = np.zeros((1, 32, 32), np.uint8)
    cls[0, ::2, :] = 1
    cls[0, 1::4, -1] = 1
    cls[0, 3::4, 0] = 1
    fg, comp, first = label_components(cls)
    assert comp.max() == 0 and first.tolist() == [0]


def test_color_tolerance():
    x = np.array([[[[0.9, 0.1, 0.1], [0.52, 0.0, 0.0], [0.7, 0.7, 0.7], [0.2, 0.9, 0.8]]]], np.float32)
    assert classify_pixels(x, 0.45).tolist() == [[[1, 0, 0, 6]]]
    assert classify_pixels(x, 0.5).tolist() == [[[1, 1, 0, 6]]]


def _rounded_square(cut: int, rgb=(255, 0, 0)) -> np.ndarray:
    """A 9x9 square on a 32x32 canvas with a ``cut``-pixel triangle off each corner."""
    img = np.zeros((1, 32, 32, 3), np.uint8)
    block = np.ones((9, 9), bool)
    for i in range(cut):
        for j in range(cut - i):
            for y, x in ((i, j), (i, 8 - j), (8 - i, j), (8 - i, 8 - j)):
                block[y, x] = False
    img[0, 10:19, 10:19][block] = rgb
    return img


def test_near_miss_credit_grows_toward_the_shape_the_rules_threshold():
    from unigrpo.shapes.segment import near_miss_credit

    credit = [near_miss_credit(S.detect(_rounded_square(cut))) for cut in (1, 2, 3)]
    sq, ci = S.SHAPES.index("square"), S.SHAPES.index("circle")
    fills = [S.detect(_rounded_square(cut)).fill[0] for cut in (1, 2, 3)]
    assert fills[0] >= 0.87 > fills[1] > 0.8 > fills[2]  # square, then circles by the rules
    assert credit[0][0, sq] == 1.0 and credit[1][0, ci] == 1.0 and credit[2][0, ci] == 1.0
    assert 0.3 < credit[1][0, sq] < 0.5 and credit[2][0, sq] == 0.0  # 0.5 * (1 - (0.87 - fill) / 0.1)
    assert credit[0][0, ci] == pytest.approx(0.5 * (1 - (fills[0] - 0.87) / 0.1))  # past the circles' edge


def test_dense_mode_credits_near_misses_only_where_unclaimed():
    red_square = S.Constraints((S.ObjectSpec("square", "red"),))
    blue_square = S.Constraints((S.ObjectSpec("square", "blue"),))
    scores = {mode: [S.score(_rounded_square(c), [red_square], mode=mode)[0][0] for c in (1, 2, 3)]
              for mode in S.verifier.MODES}
    assert scores["strict"] == [1.0, 0.0, 0.0] and scores["shaped"] == [1.0, 0.0, 0.0]
    d = scores["dense"]
    assert d[0] == 1.0 and 0.0 < d[1] < 0.5 and d[2] == 0.0  # more credit the squarer it is
    # the credit is (0.5 * (1 - d)) for the count clause, times the same for exclusivity
    credit = S.segment.near_miss_credit(S.detect(_rounded_square(2)))[0, S.SHAPES.index("square")]
    assert d[1] == pytest.approx(credit ** 2, rel=1e-5)
    # a colour-incompatible group gets nothing
    assert S.score(_rounded_square(2), [blue_square], mode="dense")[0][0] == 0.0
    # images where no near miss got credit score exactly as in shaped, the others no lower
    prompts = S.all_prompts()
    imgs, _ = S.render_prompts(prompts, np.random.default_rng(7))
    kept, edited = _edit(prompts, 4, lambda plan, p, rng: _replace(plan, 0, shape="circle"))
    for ims, ps in ((imgs, prompts), (_blur(edited), kept)):
        shaped, _ = S.score(ims, ps, mode="shaped")
        dense, bd = S.score(ims, ps, mode="dense")
        credited = np.array([any("near misses" in c.detail for c in cl) for cl in bd.clauses])
        assert np.array_equal(dense[~credited], shaped[~credited])
        assert (dense[credited] > shaped[credited]).all()
    assert credited.sum() > 10  # squares redrawn as circles: near misses
