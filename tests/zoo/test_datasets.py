"""Toy benchmarks: determinism, exact evidence masks, labels from the generator's ground truth."""
import math

import pytest
import torch

from vit_patching.zoo import available_datasets, load_dataset
from vit_patching.zoo.datasets import (
    CAPTION_CLASS_NAMES,
    CLASS_HUES,
    CONJUNCTION_CLASS_NAMES,
    DISTRACTOR_HUES,
    GAP,
    HUE_JITTER,
    PART_HUES,
    RELATION_CLASS_NAMES,
    SHAPE_NAMES,
    SHAPES_CLASS_NAMES,
    ToyDataset,
    batch_from_scenes,
    caption_label,
    conjunction_label,
    evidence_masks,
    generate,
    generate_sample,
    object_map,
    relation_label,
    render_scenes,
    sample_scenes,
    shape_templates,
)
from vit_patching.zoo.render import cat_scenes, select_scenes

TASKS = ["shapes", "conjunction", "relation", "captions"]


def naive_footprint(shape: str, x0: int, y0: int, size: int, height: int = 64, width: int = 64) -> torch.Tensor:
    """Independent per-pixel rasteriser: pixel (row i, col j) is in when its centre is inside the outline."""
    out = torch.zeros(height, width, dtype=torch.bool)
    r = size / 2
    cx, cy = x0 + r, y0 + r
    for i in range(max(0, y0 - 1), min(height, y0 + size + 1)):
        for j in range(max(0, x0 - 1), min(width, x0 + size + 1)):
            dx, dy = j + 0.5 - cx, i + 0.5 - cy
            d = math.hypot(dx, dy)
            inside_box = abs(dx) < r and abs(dy) < r
            if shape == "circle":
                inside = d < r
            elif shape == "square":
                inside = inside_box
            elif shape == "triangle":  # apex at the top middle, base is the bottom edge of the box
                inside = abs(dy) < r and abs(dx) < (dy + r) / 2
            elif shape == "plus":
                inside = inside_box and (abs(dx) < r / 3 or abs(dy) < r / 3)
            elif shape == "ring":
                inside = 0.55 * r <= d < r
            elif shape == "diamond":
                inside = abs(dx) + abs(dy) < r
            else:
                raise AssertionError(shape)
            out[i, j] = inside
    return out


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_tensors_and_prefix_stable(task):
    a, b = generate(task, 300, seed=5), generate(task, 300, seed=5)
    for f in ("images", "pixels", "labels", "masks"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    small = generate(task, 7, seed=5)
    assert torch.equal(small.images, a.images[:7]) and torch.equal(small.masks, a.masks[:7])
    c = generate(task, 300, seed=6)
    assert not torch.equal(a.images, c.images)
    assert (a.labels != c.labels).any()


@pytest.mark.parametrize("task", TASKS)
def test_batch_contents(task):
    b = load_dataset(task, 64, seed=1)
    assert b.images.shape == (64, 3, 64, 64) and b.images.dtype == torch.float32
    assert b.pixels.shape == (64, 3, 64, 64) and 0.0 <= float(b.pixels.min()) and float(b.pixels.max()) <= 1.0
    assert torch.allclose(b.images, (b.pixels - 0.5) / 0.5)
    assert b.labels.dtype == torch.int64 and b.masks.dtype == torch.bool and b.masks.shape == (64, 64, 64)
    names = {"shapes": SHAPES_CLASS_NAMES, "conjunction": CONJUNCTION_CLASS_NAMES, "relation": RELATION_CLASS_NAMES,
             "captions": CAPTION_CLASS_NAMES}
    assert b.class_names == names[task]
    assert b.masks.flatten(1).any(1).all()  # every image has evidence
    sub = b[3]
    assert len(sub) == 1 and torch.equal(sub.images[0], b.images[3])


@pytest.mark.parametrize("task", TASKS)
def test_masks_exactly_cover_the_drawn_evidence(task):
    s = sample_scenes(task, 200, seed=2)
    masks = batch_from_scenes(s).masks
    assert torch.equal(masks, evidence_masks(s))
    # 1. the mask is where drawing the evidence changes the (noise-free) background
    bg = render_scenes(s, "none", noise=False)
    ev = render_scenes(s, "evidence", noise=False)
    changed = (ev != bg).any(dim=1)
    assert torch.equal(changed, masks)
    # 2. distractors never touch the mask
    dis = render_scenes(s, "distractors", noise=False)
    assert not ((dis != bg).any(dim=1) & masks).any()
    # 3. in the final image, masked pixels are exactly the evidence colour plus the pixel noise
    full = render_scenes(s)
    omap = object_map(s)
    fill = s.colour[torch.arange(200).view(-1, 1, 1), omap.clamp(min=0)].permute(0, 3, 1, 2)  # [n, 3, H, W]
    expected = (fill + s.noise).clamp(0, 1)
    m = masks.unsqueeze(1).expand_as(full)
    assert torch.equal(full[m], expected[m])
    # 4. independent rasteriser: mask == union of the evidence objects' geometric footprints
    for i in range(0, 200, 20):
        ref = torch.zeros(64, 64, dtype=torch.bool)
        for j in range(s.shape.shape[1]):
            if s.evidence[i, j] and s.present[i, j]:
                x0, y0 = s.corner[i, j].tolist()
                ref |= naive_footprint(SHAPE_NAMES[int(s.shape[i, j])], x0, y0, int(s.size[i, j]))
        assert torch.equal(ref, masks[i]), i


@pytest.mark.parametrize("task", TASKS)
def test_objects_inside_image_and_apart(task):
    s = sample_scenes(task, 300, seed=3)
    lo, hi = s.corner, s.corner + s.size.unsqueeze(-1)
    assert (lo >= 0).all() and (hi <= 64).all()
    n_obj = s.shape.shape[1]
    for a in range(n_obj):
        for b in range(a + 1, n_obj):
            both = s.present[:, a] & s.present[:, b]
            apart = ((lo[:, a] >= hi[:, b] + GAP) | (lo[:, b] >= hi[:, a] + GAP)).any(-1)
            assert (apart | ~both).all()
    assert s.present[s.evidence].all()
    assert (s.present & ~s.evidence).sum(1).min() >= 1  # there are distractors


def test_naive_and_template_rasterisers_agree_on_every_shape_and_size():
    for size in range(6, 26):
        templates = shape_templates(size)
        for k, shape in enumerate(SHAPE_NAMES):
            ref = naive_footprint(shape, 3, 5, size, 40, 40)[5 : 5 + size, 3 : 3 + size]
            assert torch.equal(templates[k], ref), (shape, size)
    sq = shape_templates(4)[SHAPE_NAMES.index("square")]
    assert int(sq.sum()) == 16
    circle = shape_templates(20)[SHAPE_NAMES.index("circle")]
    assert abs(int(circle.sum()) - math.pi * 100) < 0.05 * math.pi * 100


def test_shapes_labels_follow_the_evidence_object_and_distractors_never_carry_a_class():
    s = sample_scenes("shapes", 2000, seed=4)
    b = batch_from_scenes(s)
    assert torch.equal(b.labels, s.labels)
    assert s.evidence[:, 0].all() and not s.evidence[:, 1:].any()
    assert b.labels.bincount(minlength=4).min() > 400  # balanced
    # class k = SHAPE_NAMES[k] drawn in the k-th class hue, as the class name says
    for k, name in enumerate(SHAPES_CLASS_NAMES):
        hue, shape = name.split()
        sel = s.labels == k
        assert (s.shape[sel, 0] == SHAPE_NAMES.index(shape)).all()
        assert (s.colour[sel, 0] - torch.tensor(CLASS_HUES[hue])).abs().max() <= HUE_JITTER + 1e-6
    _check_distractors(s)


def test_captions_label_is_the_objects_colour_and_shape_as_its_caption_says():
    s = sample_scenes("captions", 3200, seed=8)
    b = batch_from_scenes(s)
    assert torch.equal(b.labels, s.labels) and b.class_names == CAPTION_CLASS_NAMES
    assert s.evidence[:, 0].all() and not s.evidence[:, 1:].any()
    assert len(CAPTION_CLASS_NAMES) == len(set(CAPTION_CLASS_NAMES)) == 16
    # the caption, read word by word, names the evidence object's drawn hue and shape
    for k, caption in enumerate(CAPTION_CLASS_NAMES):
        article, hue, shape = caption.split()
        sel = s.labels == k
        assert article == "a" and hue in CLASS_HUES and shape in SHAPE_NAMES[:4]
        assert (s.shape[sel, 0] == SHAPE_NAMES.index(shape)).all()
        assert (s.part_type[sel, 0] == list(CLASS_HUES).index(hue)).all()
        assert (s.colour[sel, 0] - torch.tensor(CLASS_HUES[hue])).abs().max() <= HUE_JITTER + 1e-6
    assert torch.equal(caption_label(s.part_type[:, 0], s.shape[:, 0]), s.labels)
    # every caption occurs, hue and shape independent: 3200 / 16 = 200 per caption
    counts = s.labels.bincount(minlength=16)
    assert counts.min() > 150 and counts.max() < 250
    assert (16 <= s.size[:, 0]).all() and (s.size[:, 0] <= 24).all()
    _check_distractors(s)  # no distractor is drawn in a class hue: the object is the only class-hued one
    with pytest.raises(ValueError, match="hue, shape: expected indices in 0..3"):
        caption_label(torch.tensor([4]), torch.tensor([0]))


def _check_distractors(s):
    dis = s.present & ~s.evidence
    colours = s.colour[dis]  # [k, 3]
    class_rgb = torch.tensor(list(CLASS_HUES.values()))
    dis_rgb = torch.tensor(list(DISTRACTOR_HUES.values()))
    # every distractor hue is >= 0.35 (max over channels) from every class hue, before jitter
    assert (dis_rgb[:, None, :] - class_rgb[None]).abs().amax(-1).min() >= 0.35
    gap = (colours[:, None, :] - class_rgb[None]).abs().amax(-1).amin(-1)  # distance to the nearest class hue
    assert gap.min() >= 0.35 - 2 * HUE_JITTER  # no distractor can be mistaken for a class colour
    vivid = (colours.amax(-1) - colours.amin(-1)) > 0.4
    assert 0.2 < vivid.float().mean() < 0.6  # both muted and vivid distractors occur
    assert (colours[vivid][:, None, :] - dis_rgb[None]).abs().amax(-1).amin(-1).max() <= HUE_JITTER + 1e-6
    assert set(s.shape[dis].tolist()) == set(range(len(SHAPE_NAMES)))  # every shape, class shapes included


def test_conjunction_labels_follow_the_pair_and_one_part_is_uninformative():
    s = sample_scenes("conjunction", 3000, seed=7)
    names = list(PART_HUES)
    matching = {  # written out independently of the generator's table
        frozenset({"red", "green"}): 0, frozenset({"blue", "yellow"}): 0,
        frozenset({"red", "blue"}): 1, frozenset({"green", "yellow"}): 1,
        frozenset({"red", "yellow"}): 2, frozenset({"green", "blue"}): 2,
    }
    a, b = s.part_type[:, 0], s.part_type[:, 1]
    assert (a != b).all() and (s.part_type[:, 2:] == -1).all()
    expected = torch.tensor([matching[frozenset({names[i], names[j]})] for i, j in zip(a.tolist(), b.tolist())])
    assert torch.equal(s.labels, expected)
    assert torch.equal(conjunction_label(a, b), expected)
    # the part's colour is its type's hue (up to a small jitter)
    hues = torch.tensor(list(PART_HUES.values()))
    assert (s.colour[:, :2] - hues[s.part_type[:, :2]]).abs().max() <= HUE_JITTER + 1e-6
    _check_distractors(s)
    # any single part type occurs in every class about equally often: alone it says nothing about the label
    for t in range(4):
        has = (a == t) | (b == t)
        frac = torch.bincount(s.labels[has], minlength=3).float() / has.sum()
        assert (frac - 1 / 3).abs().max() < 0.06, (t, frac)


def test_relation_label_is_colour_sameness_and_one_marked_object_is_uninformative():
    s = sample_scenes("relation", 4000, seed=8)
    assert RELATION_CLASS_NAMES == ("different colours", "same colour")
    assert s.evidence[:, :2].all() and not s.evidence[:, 2:].any() and s.present[:, :2].all()
    # the label, recomputed from the drawn colours: the nearest class hue of each marked object
    hues = torch.tensor(list(PART_HUES.values()))
    nearest = (s.colour[:, :2, None, :] - hues).abs().amax(-1).argmin(-1)  # [n, 2]
    assert torch.equal(nearest, s.part_type[:, :2])
    assert (s.colour[:, :2] - hues[nearest]).abs().max() <= HUE_JITTER + 1e-6  # the mark: a class hue
    expected = (nearest[:, 0] == nearest[:, 1]).long()
    assert torch.equal(s.labels, expected)
    assert torch.equal(relation_label(s.part_type[:, 0], s.part_type[:, 1]), expected)
    assert abs(float(s.labels.float().mean()) - 0.5) < 0.03  # 50/50
    assert (s.shape[:, :2] < 4).all() and (s.part_type[:, 2:] == -1).all()  # evidence shapes only
    _check_distractors(s)  # no distractor is drawn in a class hue
    # one marked object alone (its hue, its shape) says nothing about the label; nor does the pair of shapes
    for j in (0, 1):
        for v in range(4):
            for what in (s.part_type[:, j], s.shape[:, j]):
                sel = what == v
                assert sel.sum() > 800 and abs(float(s.labels[sel].float().mean()) - 0.5) < 0.06, (j, v)
    same_shape = s.shape[:, 0] == s.shape[:, 1]
    assert abs(float(s.labels[same_shape].float().mean()) - 0.5) < 0.06


def test_relation_label_checks_its_arguments():
    with pytest.raises(ValueError, match="type_a, type_b: expected part types in 0..3"):
        relation_label(torch.tensor([4]), torch.tensor([1]))


def test_relation_masks_are_the_two_marked_objects_and_samples_match_generate():
    s = sample_scenes("relation", 300, seed=9)
    b = batch_from_scenes(s)
    omap = object_map(s)
    assert torch.equal(b.masks, (omap == 0) | (omap == 1))
    assert ((omap == 0).flatten(1).any(1) & (omap == 1).flatten(1).any(1)).all()  # both marked objects visible
    full = generate("relation", 300, seed=9)
    for i in (0, 137, 299):
        one = generate_sample("relation", i, seed=9)
        assert torch.equal(one.images[0], full.images[i]) and torch.equal(one.masks[0], full.masks[i])
        assert int(one.labels[0]) == int(full.labels[i])
    # scenes split and re-joined render the same images
    parts = cat_scenes([select_scenes(s, torch.arange(0, 100)), select_scenes(s, torch.arange(100, 300))])
    assert torch.equal(batch_from_scenes(parts).images, b.images)


def test_conjunction_label_rejects_equal_types():
    with pytest.raises(ValueError, match="type_a"):
        conjunction_label(torch.tensor([1]), torch.tensor([1]))


def test_torch_dataset():
    ds = ToyDataset("conjunction", n=40, seed=0, with_masks=True)
    assert len(ds) == 40
    image, label, mask = ds[3]
    ref = generate("conjunction", 40, seed=0)
    assert torch.equal(image, ref.images[3]) and int(label) == int(ref.labels[3]) and torch.equal(mask, ref.masks[3])
    loader = torch.utils.data.DataLoader(ToyDataset("shapes", n=10, seed=0), batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 64, 64) and y.shape == (4,)


def test_unknown_names_and_bad_arguments():
    assert available_datasets() == ["captions", "conjunction", "relation", "shapes"]
    with pytest.raises(ValueError, match=r"name.*captions.*conjunction.*relation.*shapes.*'nope'"):
        load_dataset("nope", 4, 0)
    with pytest.raises(ValueError, match="n: expected a positive int, got 0"):
        load_dataset("shapes", 0, 0)
    with pytest.raises(ValueError, match="seed: expected a non-negative int, got -1"):
        load_dataset("shapes", 4, -1)
    with pytest.raises(ValueError, match="objects"):
        render_scenes(sample_scenes("shapes", 2, 0), objects="some")  # type: ignore[arg-type]


def test_docstring_examples_run():
    import doctest

    import vit_patching.zoo as zoo
    import vit_patching.zoo.datasets as datasets
    import vit_patching.zoo.registry as registry
    import vit_patching.zoo.render as render

    for module in (zoo, datasets, registry, render):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, (module.__name__, result)
