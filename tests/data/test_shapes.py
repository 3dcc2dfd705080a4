import numpy as np
from PIL import Image

from segops.data.shapes import CLASSES, generate_shapes, render_sample


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_shapes(tmp_path / "a", n=6, size=40, seed=11)
    b = generate_shapes(tmp_path / "b", n=6, size=40, seed=11)
    files_a = _files(a)
    assert len(files_a) == 13  # 6 images, 6 masks, classes.txt
    assert files_a == _files(b)


def test_other_seed_differs_and_larger_n_extends(tmp_path):
    a = generate_shapes(tmp_path / "a", n=3, size=40, seed=1)
    b = generate_shapes(tmp_path / "b", n=5, size=40, seed=1)
    c = generate_shapes(tmp_path / "c", n=3, size=40, seed=2)
    for name in ("images/00000.png", "masks/00002.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_layout_and_values(tmp_path):
    root = generate_shapes(tmp_path, n=4, size=48, seed=0)
    assert (root / "classes.txt").read_text().split() == list(CLASSES)
    image = Image.open(root / "images" / "00000.png")
    mask = np.asarray(Image.open(root / "masks" / "00000.png"))
    assert image.mode == "RGB" and image.size == (48, 48)
    assert mask.shape == (48, 48) and set(np.unique(mask)) <= set(range(len(CLASSES)))


def test_scenes_have_all_classes_imbalance_overlap_and_colour_ambiguity():
    samples = [render_sample(0, i, 64) for i in range(80)]
    masks = np.stack([m for _, m in samples])
    counts = np.bincount(masks.ravel(), minlength=5)
    assert (counts[1:] > 0).all()  # at least 4 foreground classes appear
    assert counts[1] > 2 * counts[4]  # imbalanced on purpose
    assert sum(len(np.unique(m)) > 2 for m in masks) > 40  # several classes per image
    # Colour does not solve it: most foreground colours (quantised) also occur in backgrounds.
    images = np.stack([im for im, _ in samples]) // 32
    codes = images[..., 0] * 64 + images[..., 1] * 8 + images[..., 2]
    bg = np.zeros(512, bool)
    bg[np.unique(codes[masks == 0])] = True
    fg = codes[masks > 0]
    assert bg[fg].mean() > 0.9


def test_occlusion_happens():
    # Objects are drawn over each other: borders between two foreground classes must be common.
    touching = 0
    for i in range(40):
        _, m = render_sample(0, i, 64)
        h = (m[:, 1:] != m[:, :-1]) & (m[:, 1:] > 0) & (m[:, :-1] > 0)
        touching += bool(h.any())
    assert touching >= 5
