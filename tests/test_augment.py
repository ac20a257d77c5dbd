"""Tests for mnistflow.data.augment: deskewing and seeded augmentation (synthetic images)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from mnistflow.config import AugmentConfig, EncodeConfig, ParamsError, config, load_params
from mnistflow.data import augment as aug
from mnistflow.util.fileio import load_npz, read_json
from tests.helpers import REPO_ROOT, copy_repo, run, use_tiny_dataset, workspace_env


def augment_cfg(**overrides: float) -> AugmentConfig:
    """An AugmentConfig built through params validation, from explicit test values."""
    raw = {
        "copies": 2,
        "max_shift": 2,
        "max_rotation": 10.0,
        "elastic_alpha": 0.0,
        "elastic_sigma": 4.0,
        "seed": 0,
    }
    raw.update(overrides)
    return AugmentConfig.from_section(raw, "encode.augment")


def slanted_bars(slopes: list[float]) -> np.ndarray:
    """Vertical bars (3 px wide, rows 4..23) sheared by ``slope`` columns per row, off-centre."""
    images = np.zeros((len(slopes), 28, 28), dtype=np.uint8)
    for k, slope in enumerate(slopes):
        for r in range(4, 24):
            c = round(16 + slope * (r - 13.5))
            images[k, r, c - 1 : c + 2] = 255
    return images


def label_discs(labels: np.ndarray) -> np.ndarray:
    """Images whose label is readable after any small transform: a centred disc of radius 8
    with constant intensity 20 * (label + 1)."""
    r, c = np.mgrid[:28, :28]
    disc = (r - 13.5) ** 2 + (c - 13.5) ** 2 <= 8**2
    return (disc[None] * (20 * (labels[:, None, None].astype(np.int64) + 1))).astype(np.uint8)


def random_digits(n: int, seed: int) -> np.ndarray:
    """Blurry random blobs in [0, 255] with exact 0 and 255 present."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
    images[:, :4] = 0
    images[:, 14, 14] = 255
    return images


# ---------------------------------------------------------------- resampling


@pytest.mark.unit
def test_bilinear_equals_scipy_map_coordinates_inside_outside_and_on_the_edges() -> None:
    """The oracle: scipy's ``map_coordinates(order=1, mode="constant")`` per image, with
    coordinates inside, outside, on the last row/column and a hair beyond the edges."""
    rng = np.random.default_rng(3)
    images = random_digits(40, seed=4).astype(np.float32)
    rows = rng.uniform(-2.0, 29.0, size=images.shape)
    cols = rng.uniform(-2.0, 29.0, size=images.shape)
    rows[:, 0, :4] = [0.0, 27.0, -1e-4, 27.0001]
    cols[:, 0, :4] = [27.0, 0.0, 5.0, 5.0]
    rows[:, 1, :3] = np.arange(3)  # whole pixels read exactly
    cols[:, 1, :3] = [0, 13, 27]
    out = aug.bilinear(images, rows, cols)
    assert out.dtype == np.float32
    for i in range(len(images)):
        expected = ndimage.map_coordinates(
            images[i], np.stack([rows[i], cols[i]]), order=1, mode="constant", cval=0.0
        )
        np.testing.assert_allclose(out[i], expected, atol=0.02)
        np.testing.assert_array_equal(out[i, 1, :3], images[i, [0, 1, 2], [0, 13, 27]])
    assert (out[:, 0, 2:4] == 0).all()


@pytest.mark.unit
@pytest.mark.parametrize("sigma", [0.7, 4.0, 6.0])
def test_smooth_equals_scipy_gaussian_filter_with_constant_edges(sigma: float) -> None:
    fields = np.random.default_rng(5).uniform(-1, 1, size=(6, 28, 28))
    expected = ndimage.gaussian_filter(fields, sigma=(0, sigma, sigma), mode="constant")
    np.testing.assert_allclose(aug.smooth(fields, sigma), expected, atol=1e-5)


def scipy_distort(images: np.ndarray, cfg: AugmentConfig, seed: int) -> np.ndarray:
    """The distortion written the textbook way (float64, scipy's gaussian_filter and
    map_coordinates per image), drawing the same random numbers in the same order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    m, h, w = images.shape
    shift = rng.integers(-cfg.max_shift, cfg.max_shift + 1, size=(2, m, 1, 1))
    angle = np.deg2rad(rng.uniform(-cfg.max_rotation, cfg.max_rotation, size=(m, 1, 1)))
    r, c = np.mgrid[:h, :w] - np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None]
    field = ndimage.gaussian_filter(
        rng.uniform(-1.0, 1.0, size=(2, m, h, w)),
        sigma=(0, 0, cfg.elastic_sigma, cfg.elastic_sigma),
        mode="constant",
    )
    r = r + cfg.elastic_alpha * field[0]
    c = c + cfg.elastic_alpha * field[1]
    rows = np.cos(angle) * r - np.sin(angle) * c + (h - 1) / 2 - shift[0]
    cols = np.sin(angle) * r + np.cos(angle) * c + (w - 1) / 2 - shift[1]
    return np.stack([
        ndimage.map_coordinates(img.astype(np.float64), np.stack([rows[i], cols[i]]), order=1)
        for i, img in enumerate(images)
    ])  # fmt: skip


@pytest.mark.unit
def test_distort_equals_the_textbook_scipy_distortion_from_the_same_draws() -> None:
    images = random_digits(50, seed=9)
    cfg = augment_cfg(copies=0, max_shift=2, max_rotation=10.0, elastic_alpha=34.0)
    out = aug.distort(images, cfg, np.random.SeedSequence(11))
    expected = scipy_distort(images, cfg, 11)
    np.testing.assert_allclose(out, expected, atol=0.05)
    assert np.abs(out - images).max() > 100  # the images did move


# ---------------------------------------------------------------- deskew


@pytest.mark.unit
def test_deskew_makes_a_slanted_bar_upright_and_centred() -> None:
    images = slanted_bars([0.5, -0.4, 0.3, 0.0])
    before = images.copy()
    _, _, skew_before = aug.skew_moments(images)
    assert np.all(np.abs(skew_before[:3]) > 0.25)

    out = aug.deskew(images, workers=1)

    assert out.dtype == np.float32
    assert out.shape == images.shape
    assert out.min() >= 0
    assert out.max() <= 255
    np.testing.assert_array_equal(images, before)  # input untouched
    mr, mc, skew_after = aug.skew_moments(out)
    assert np.all(np.abs(skew_after) < 0.02), skew_after
    assert np.all(np.abs(skew_after[:3]) < np.abs(skew_before[:3]) / 10)
    np.testing.assert_allclose(mr, 13.5, atol=0.3)
    np.testing.assert_allclose(mc, 13.5, atol=0.3)
    # Upright: the ink's mean column is the same on every inked row.
    for image in out:
        rows = image.sum(axis=1) > 100
        col_means = (image[rows] * np.arange(28)).sum(axis=1) / image[rows].sum(axis=1)
        assert col_means.max() - col_means.min() < 1.0
    # Ink is conserved up to interpolation at the edges of the stroke.
    np.testing.assert_allclose(out.sum(axis=(1, 2)), images.sum(axis=(1, 2)), rtol=0.05)


@pytest.mark.unit
def test_deskew_equals_the_moment_affine_transform() -> None:
    """Same result as the textbook recipe: ``affine_transform`` with matrix [[1, 0], [skew, 1]]
    and the offset that maps the image centre to the centre of mass (order 1)."""
    images = random_digits(20, seed=8)
    images[:, :, :6] = 0  # an off-centre, lopsided blob
    out = aug.deskew(images, workers=1)
    mr, mc, skew = aug.skew_moments(images)
    centre = np.array([13.5, 13.5])
    for i, image in enumerate(images.astype(np.float32)):
        matrix = np.array([[1.0, 0.0], [skew[i], 1.0]])
        offset = np.array([mr[i], mc[i]]) - matrix @ centre
        expected = ndimage.affine_transform(image, matrix, offset=offset, order=1, cval=0.0)
        np.testing.assert_allclose(out[i], expected, atol=1e-3)


@pytest.mark.unit
def test_deskew_keeps_blank_images_blank() -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[1, 10, 5:20] = 200  # one horizontal line: zero row variance, skew undefined
    out = aug.deskew(images, workers=1)
    assert np.isfinite(out).all()
    assert out[0].max() == 0
    assert out[1].sum() == pytest.approx(images[1].sum(), rel=1e-4)


@pytest.mark.unit
def test_deskew_is_independent_of_workers() -> None:
    images = random_digits(aug.CHUNK + 300, seed=3)  # more than one chunk
    np.testing.assert_array_equal(aug.deskew(images, workers=1), aug.deskew(images, workers=2))


# ---------------------------------------------------------------- augment


@pytest.mark.unit
def test_augment_shapes_dtype_range_and_originals_first() -> None:
    images = random_digits(50, seed=1)
    labels = np.arange(50, dtype=np.uint8) % 10
    before = images.copy()
    cfg = augment_cfg(copies=3, elastic_alpha=34.0)

    x, y = aug.augment(images, labels, cfg, workers=1)

    assert x.dtype == np.float32
    assert x.shape == (200, 28, 28)
    assert y.shape == (200,)
    assert np.isfinite(x).all()
    assert x.min() >= 0.0
    assert x.max() <= 255.0
    np.testing.assert_array_equal(images, before)  # input untouched
    np.testing.assert_array_equal(x[:50], images.astype(np.float32))
    for k in range(1, 4):  # every copy differs from the originals
        assert not np.array_equal(x[50 * k : 50 * (k + 1)], x[:50])


@pytest.mark.unit
def test_augment_without_copies_returns_the_originals() -> None:
    images = random_digits(7, seed=2)
    labels = np.arange(7)
    x, y = aug.augment(images, labels, augment_cfg(copies=0), workers=2)
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, labels)


@pytest.mark.unit
def test_augment_keeps_labels_aligned() -> None:
    labels = np.random.default_rng(5).integers(0, 10, size=300)
    images = label_discs(labels)
    cfg = augment_cfg(copies=4, max_shift=2, max_rotation=15.0, elastic_alpha=34.0)

    x, y = aug.augment(images, labels, cfg, workers=2)

    np.testing.assert_array_equal(y, np.tile(labels, 5))
    decoded = np.rint(x.max(axis=(1, 2)) / 20).astype(int) - 1
    np.testing.assert_array_equal(decoded, y)


@pytest.mark.unit
def test_augment_is_deterministic_and_independent_of_workers() -> None:
    images = random_digits(1300, seed=4)
    labels = np.arange(1300) % 10
    cfg = augment_cfg(copies=2, elastic_alpha=20.0)  # 2600 copies: two chunks
    assert aug.CHUNK < 1300 * 2

    x1, y1 = aug.augment(images, labels, cfg, workers=1)
    x2, y2 = aug.augment(images, labels, cfg, workers=2)
    x3, _ = aug.augment(images, labels, cfg.model_copy(update={"seed": 1}), workers=2)

    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1[1300:], x3[1300:])  # the seed matters
    np.testing.assert_array_equal(x1[:1300], x3[:1300])


@pytest.mark.unit
def test_augment_shift_only_moves_whole_pixels_within_max_shift() -> None:
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    images[:, 8:20, 10:16] = np.arange(72, dtype=np.uint8).reshape(12, 6) + 100
    cfg = augment_cfg(copies=1, max_shift=3, max_rotation=0.0)

    x, _ = aug.augment(images, np.zeros(40, dtype=np.int64), cfg, workers=1)

    seen = set()
    for original, moved in zip(images, x[40:], strict=True):
        matches = [
            (dr, dc)
            for dr in range(-3, 4)
            for dc in range(-3, 4)
            if np.array_equal(np.roll(original, (dr, dc), axis=(0, 1)), moved)
        ]
        assert len(matches) == 1, "each copy is the original moved by whole pixels"
        seen.add(matches[0])
    assert len(seen) > 10  # shifts really are random


@pytest.mark.unit
def test_augment_rotation_turns_a_bar_within_max_rotation() -> None:
    images = np.zeros((60, 28, 28), dtype=np.uint8)
    images[:, 4:24, 13:15] = 255  # an upright bar through the centre
    cfg = augment_cfg(copies=1, max_shift=0, max_rotation=20.0)

    x, _ = aug.augment(images, np.zeros(60, dtype=np.int64), cfg, workers=1)

    _, _, skew = aug.skew_moments(x[60:])
    # A bar turned by theta has skew tan(theta) in magnitude.
    angles = np.degrees(np.arctan(np.abs(skew)))
    assert angles.max() <= 20.5
    assert angles.max() > 10  # rotations really happen
    mr, mc, _ = aug.skew_moments(x[60:])
    np.testing.assert_allclose(mr, 13.5, atol=0.2)  # about the centre
    np.testing.assert_allclose(mc, 13.5, atol=0.2)


@pytest.mark.unit
def test_elastic_distortion_is_off_at_zero_alpha_and_local_otherwise() -> None:
    images = random_digits(30, seed=6)
    labels = np.zeros(30, dtype=np.int64)
    plain, _ = aug.augment(
        images, labels, augment_cfg(copies=1, max_shift=0, max_rotation=0.0), workers=1
    )
    np.testing.assert_array_equal(plain[30:], plain[:30])  # no transform at all

    bent, _ = aug.augment(
        images,
        labels,
        augment_cfg(copies=1, max_shift=0, max_rotation=0.0, elastic_alpha=34.0),
        workers=1,
    )
    assert not np.array_equal(bent[30:], bent[:30])
    # Smooth field: ink moves by a few pixels, the mass stays near where it was.
    m0 = aug.skew_moments(bent[:30])
    m1 = aug.skew_moments(bent[30:])
    np.testing.assert_allclose(m1[0], m0[0], atol=2.0)
    np.testing.assert_allclose(m1[1], m0[1], atol=2.0)


@pytest.mark.unit
def test_augment_rejects_misaligned_labels_and_bad_workers() -> None:
    images = random_digits(5, seed=7)
    with pytest.raises(ValueError, match="5 images but labels of shape"):
        aug.augment(images, np.zeros(4), augment_cfg(), workers=1)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        aug.augment(images, np.zeros(5), augment_cfg(), workers=0)
    with pytest.raises(ValueError, match=r"expected images of shape \(n, rows, cols\)"):
        aug.deskew(images.reshape(5, -1), workers=1)


# ---------------------------------------------------------------- online epochs


@pytest.mark.unit
def test_epoch_batch_is_the_same_for_the_same_epoch_and_differs_between_epochs() -> None:
    images, labels = random_digits(2 * aug.CHUNK + 7, seed=5), np.arange(2 * aug.CHUNK + 7) % 10
    cfg = augment_cfg(elastic_alpha=34.0)
    x1, y1 = aug.epoch_batch(images, labels, 1, cfg)
    again, _ = aug.epoch_batch(images, labels, 1, cfg)
    x2, _ = aug.epoch_batch(images, labels, 2, cfg)
    other_seed, _ = aug.epoch_batch(images, labels, 1, augment_cfg(elastic_alpha=34.0, seed=1))
    assert x1.dtype == np.float32
    assert x1.shape == images.shape
    assert x1.min() >= 0
    assert x1.max() <= 255
    assert np.array_equal(x1, again)
    # every chunk differs from the next epoch's and from another seed's (own streams)
    for start in range(0, len(images), aug.CHUNK):
        rows = slice(start, start + aug.CHUNK)
        assert not np.array_equal(x1[rows], x2[rows])
        assert not np.array_equal(x1[rows], other_seed[rows])
    assert y1 is labels
    assert not np.array_equal(x1, images)


@pytest.mark.unit
def test_epoch_batch_keeps_each_image_with_its_label() -> None:
    labels = np.arange(40) % 10
    x, y = aug.epoch_batch(label_discs(labels), labels, 3, augment_cfg(max_rotation=15.0))
    assert np.array_equal(y, labels)
    # the disc's intensity survives shift and rotation at its centre: the label is readable
    assert np.array_equal(np.rint(x[:, 13:15, 13:15].mean(axis=(1, 2)) / 20) - 1, labels)


@pytest.mark.unit
def test_epoch_streams_are_not_the_copies_streams() -> None:
    images = random_digits(50, seed=2)
    cfg = augment_cfg(copies=1)
    copies, _ = aug.augment(images, np.zeros(50), cfg, workers=1)
    for epoch in (1, 2):
        x, _ = aug.epoch_batch(images, np.zeros(50), epoch, cfg)
        assert not np.array_equal(x, copies[50:])


@pytest.mark.unit
def test_epoch_batch_rejects_bad_epochs_and_misaligned_labels() -> None:
    images = random_digits(4, seed=1)
    with pytest.raises(ValueError, match="epoch must be a positive integer"):
        aug.epoch_batch(images, np.zeros(4), 0, augment_cfg())
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        aug.epoch_batch(images, np.zeros(3), 1, augment_cfg())


# ---------------------------------------------------------------- params


def repo_params() -> dict:
    return load_params(REPO_ROOT / "params.yaml")


@pytest.mark.unit
def test_repo_defaults_keep_the_baseline() -> None:
    cfg = config(repo_params(), "encode", EncodeConfig)
    assert cfg.deskew is False
    assert cfg.augment.copies == 0


@pytest.mark.unit
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("copies", -1, "'encode.augment.copies' must be >= 0"),
        ("copies", 2.5, "'encode.augment.copies' must be an integer"),
        ("max_shift", -2, "'encode.augment.max_shift' must be >= 0"),
        ("max_rotation", "ten", "'encode.augment.max_rotation' must be a number"),
        ("elastic_alpha", -1.0, "'encode.augment.elastic_alpha' must be >= 0"),
        ("elastic_sigma", 0, "'encode.augment.elastic_sigma' must be >= 0.1"),
        ("seed", -3, "'encode.augment.seed' must be >= 0"),
    ],
)
def test_bad_augment_params_name_the_key(key: str, value: object, message: str) -> None:
    params = repo_params()
    params["encode"]["augment"][key] = value
    with pytest.raises(ParamsError, match=re.escape(message)):
        config(params, "encode", EncodeConfig)


@pytest.mark.unit
def test_unknown_augment_option_is_rejected_by_name() -> None:
    params = repo_params()
    params["encode"]["augment"]["flip"] = True
    with pytest.raises(ParamsError, match=r"unknown key 'encode\.augment\.flip'"):
        config(params, "encode", EncodeConfig)


@pytest.mark.unit
def test_bad_encode_options_name_the_key() -> None:
    params = repo_params()
    params["encode"]["deskew"] = "yes"
    with pytest.raises(ParamsError, match=re.escape("'encode.deskew' must be true or false")):
        config(params, "encode", EncodeConfig)
    params = repo_params()
    params["encode"]["workers"] = 0
    with pytest.raises(ParamsError, match=re.escape("'encode.workers' must be >= 1")):
        config(params, "encode", EncodeConfig)
    params = repo_params()
    del params["encode"]["augment"]["copies"]
    with pytest.raises(ParamsError, match=re.escape("missing key 'encode.augment.copies'")):
        config(params, "encode", EncodeConfig)


# ---------------------------------------------------------------- encode stage


@pytest.mark.e2e
def test_encode_stage_augments_train_only(tiny_mirror: tuple[Path, dict], tmp_path: Path) -> None:
    """The stage deskews both splits, augments the training split only, and the test
    features do not depend on the augmentation settings at all."""
    folder, files = tiny_mirror
    augment_params = {
        "copies": 2,
        "max_shift": 2,
        "max_rotation": 10.0,
        "elastic_alpha": 34.0,
        "elastic_sigma": 4.0,
        "seed": 3,
    }
    edit = use_tiny_dataset(files, encode={"deskew": True, "augment": augment_params, "workers": 2})
    ws = copy_repo(tmp_path / "ws", edit)
    env = workspace_env(mirror=folder)
    run([str(Path(sys.executable).parent / "dvc"), "repro", "encode"], ws, env)

    arrays = load_npz(ws / "data/unpacked/arrays.npz")
    train = load_npz(ws / "data/encoded/train.npz")
    test = load_npz(ws / "data/encoded/test.npz")
    n_train, n_test = len(arrays["y_train"]), len(arrays["y_test"])
    assert train["X"].shape == (3 * n_train, 784)
    assert test["X"].shape == (n_test, 784)
    # Labels stay aligned with their (augmented) images: tiled in copy order.
    np.testing.assert_array_equal(train["y"].argmax(axis=1), np.tile(arrays["y_train"], 3))
    np.testing.assert_array_equal(test["y"].argmax(axis=1), arrays["y_test"])
    # The test split is deskewed like the training originals, and never augmented.
    expected_test = aug.deskew(arrays["x_test"], workers=1).reshape(n_test, -1) / np.float32(255)
    np.testing.assert_allclose(test["X"], expected_test, atol=1e-6)
    expected_train = aug.deskew(arrays["x_train"], workers=1).reshape(n_train, -1) / 255
    np.testing.assert_allclose(train["X"][:n_train], expected_train, atol=1e-6)
    info = read_json(ws / "data/encoded/info.json")
    assert (info["deskew"], info["augment_copies"]) == (True, 2)
    assert (info["n_train"], info["n_test"]) == (3 * n_train, n_test)

    # Without augmentation: the same test features, bit for bit.
    params_file = ws / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["encode"]["augment"]["copies"] = 0
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env["PYTHONPATH"] = str(ws / "src")
    run([sys.executable, "stages/encode.py"], ws, env)
    plain_test = load_npz(ws / "data/encoded/test.npz")
    np.testing.assert_array_equal(plain_test["X"], test["X"])
    assert load_npz(ws / "data/encoded/train.npz")["X"].shape == (n_train, 784)
