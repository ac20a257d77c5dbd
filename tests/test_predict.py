"""Prediction: MNIST-style preprocessing of image files, the run's encoding, real logged models."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from mnistflow.config import RegistryConfig
from mnistflow.data.encode import Encoding, flatten
from mnistflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, gunzip, parse_idx
from mnistflow.data.preprocess import ImageError, load_digit, to_mnist
from mnistflow.serving.predict import (
    PredictError,
    load_run_model,
    predict_files,
    resolve_model,
)
from mnistflow.serving.registry import register
from mnistflow.tracking import runs
from mnistflow.util.fileio import load_npz, read_json
from tests.helpers import (
    FILE_NAMES,
    copy_repo,
    run,
    use_tiny_dataset,
    workspace_env,
    write_idx_dataset,
)
from tests.mlflow_fixtures import (
    EXPERIMENT,
    Store,
    copy_store,
    mnist_like_digits,
    shared_store,
    tiny_model,
)

CFG = RegistryConfig(model_name="{dataset}-mlp", alias="champion")
DIVIDE255 = Encoding(scaling="divide255", deskew=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return shared_store(tmp_path_factory)


def _ring_on_white(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A black ring (a big '0') on a white canvas; size (w, h), box (x0, y0, x1, y1)."""
    img = Image.new("L", size, 255)
    ImageDraw.Draw(img).ellipse(box, outline=0, width=14)
    return img


def _ink_box(digit: np.ndarray) -> tuple[int, int]:
    rows = np.flatnonzero(digit.any(axis=1))
    cols = np.flatnonzero(digit.any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    r, c = np.mgrid[:28, :28]
    mass = digit.astype(float).sum()
    return (digit * r).sum() / mass, (digit * c).sum() / mass


@pytest.mark.unit
def test_big_white_background_digit_becomes_centred_white_on_black(tmp_path: Path) -> None:
    # 200x300 canvas, a 100x180 ring placed off-centre (top-left)
    img = _ring_on_white((200, 300), (10, 20, 110, 200))
    digit = to_mnist(np.asarray(img))

    assert digit.shape == (28, 28)
    assert digit.dtype == np.uint8
    assert digit.max() == 255  # ink is white
    border = np.ones((28, 28), dtype=bool)
    border[4:24, 4:24] = False
    assert not digit[border].any()  # a black 4-pixel border, as in MNIST
    height, width = _ink_box(digit)
    assert height == 20  # the long side is scaled to 20
    assert 10 <= width <= 13  # aspect ratio kept (100/180 * 20 = 11.1, plus anti-aliasing)
    com_r, com_c = _centre_of_mass(digit)
    assert (com_r, com_c) == pytest.approx((14, 14), abs=0.5)
    assert digit[14, 14] == 0  # the ring's hole is still black: the digit was not filled

    # The same image read from a file (RGB JPEG-like path: colour → luminance) gives the same.
    path = tmp_path / "ring.png"
    img.convert("RGB").save(path)
    np.testing.assert_array_equal(load_digit(path), digit)


@pytest.mark.unit
def test_transparent_background_is_treated_as_white(tmp_path: Path) -> None:
    ring = _ring_on_white((200, 300), (10, 20, 110, 200))
    rgba = Image.new("RGBA", ring.size, (0, 0, 0, 0))  # fully transparent canvas
    rgba.putalpha(Image.eval(ring, lambda v: 255 - v))  # opaque black only where the ring is
    path = tmp_path / "ring-rgba.png"
    rgba.save(path)
    np.testing.assert_array_equal(load_digit(path), to_mnist(np.asarray(ring)))


@pytest.mark.unit
def test_dark_background_larger_image_is_scaled_and_centred() -> None:
    img = Image.new("L", (100, 80), 0)
    ImageDraw.Draw(img).line((70, 10, 70, 70), fill=255, width=6)  # a '1' near the right edge
    digit = to_mnist(np.asarray(img))
    assert _ink_box(digit)[0] == 20
    com_r, com_c = _centre_of_mass(digit)
    assert (com_r, com_c) == pytest.approx((14, 14), abs=0.5)


@pytest.mark.unit
def test_mnist_like_png_round_trips_exactly(tmp_path: Path) -> None:
    images, _ = mnist_like_digits(3, seed=3)
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image, mode="L").save(path)
        np.testing.assert_array_equal(load_digit(path), image)


@pytest.mark.unit
def test_28x28_on_white_is_inverted_not_used_as_is() -> None:
    images, _ = mnist_like_digits(1, seed=4)
    digit = to_mnist(255 - images[0])
    assert (digit[0, 0], digit.max()) == (0, 255)


@pytest.mark.unit
def test_not_an_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a PNG\n")
    with pytest.raises(ImageError, match=r"notes\.png: not an image file"):
        load_digit(path)
    with pytest.raises(ImageError, match=r"missing\.png: no such file"):
        load_digit(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_digit(tmp_path)


@pytest.mark.unit
def test_truncated_png_is_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(mnist_like_digits(1, seed=1)[0][0], mode="L").save(good)
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"cut\.png: "):
        load_digit(bad)


@pytest.mark.unit
def test_unsupported_modes_and_animations_are_rejected(tmp_path: Path) -> None:
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((28, 28), 40000, dtype=np.uint16)).save(deep)
    with pytest.raises(ImageError, match=r"deep\.png: unsupported image mode 'I"):
        load_digit(deep)
    cmyk = tmp_path / "print.jpg"
    Image.new("CMYK", (28, 28)).save(cmyk)
    with pytest.raises(ImageError, match=r"print\.jpg: unsupported image mode 'CMYK'"):
        load_digit(cmyk)
    anim = tmp_path / "anim.gif"
    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    frames[0].save(anim, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"anim\.gif: has 2 frames"):
        load_digit(anim)


@pytest.mark.unit
def test_blank_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("L", (50, 50), 250).save(path)
    with pytest.raises(ImageError, match=r"blank\.png: no digit found"):
        load_digit(path)


def _write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(image, mode="L").save(paths[-1])
    return paths


@pytest.mark.unit
def test_predict_with_a_runs_logged_model(store: Store, tmp_path: Path) -> None:
    run = store.runs["wide-alpha"]
    images, labels = mnist_like_digits(20, seed=7)
    paths = _write_pngs(tmp_path / "png", images)

    model_uri, run_id = resolve_model(store.uri, CFG, run.run_id, "mnist")
    assert (model_uri, run_id) == (f"runs:/{run.run_id}/model", run.run_id)
    model = load_run_model(store.uri, model_uri)  # x/255 inside, as the run was trained
    results = predict_files(model, paths)

    assert [r.path for r in results] == [str(p) for p in paths]
    proba = tiny_model(run.hidden).predict_proba(images.reshape(20, -1) / np.float32(255))
    assert [r.digit for r in results] == list(proba.argmax(axis=1))
    np.testing.assert_allclose([r.probability for r in results], proba.max(axis=1), rtol=1e-6)
    assert np.mean([r.digit for r in results] == labels) >= 0.9  # the task is learnable


@pytest.mark.unit
def test_predict_rejects_a_bad_file_before_predicting(store: Store, tmp_path: Path) -> None:
    paths = _write_pngs(tmp_path, mnist_like_digits(2, seed=8)[0])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    model = load_run_model(
        store.uri, resolve_model(store.uri, CFG, store.runs["small"].run_id, "mnist")[0]
    )
    with pytest.raises(ImageError, match=r"bad\.png"):
        predict_files(model, [*paths, bad])


@pytest.mark.unit
def test_champion_is_resolved_from_the_registry(store: Store, tmp_path: Path) -> None:
    own = copy_store(store, tmp_path / "store")
    with pytest.raises(PredictError, match=r"no model mnist-mlp@champion.*mnistflow register"):
        resolve_model(own.uri, CFG, None, "mnist")
    with pytest.raises(PredictError, match="no MLflow run 0123"):
        resolve_model(own.uri, CFG, "0123", "mnist")
    register(own.uri, EXPERIMENT, CFG, "mnist")
    model_uri, run_id = resolve_model(own.uri, CFG, None, "mnist")
    assert (model_uri, run_id) == ("models:/mnist-mlp@champion", own.runs["wide-alpha"].run_id)
    model = load_run_model(own.uri, model_uri)
    assert model.unwrap_python_model().estimator.hidden_layer_sizes == own.runs["wide-alpha"].hidden
    # the champion of MNIST is no model for Fashion-MNIST params, nor is any MNIST run
    with pytest.raises(PredictError, match=r"no model fashion-mnist-mlp@champion"):
        resolve_model(own.uri, CFG, None, "fashion-mnist")
    mnist_run = own.runs["small"].run_id
    with pytest.raises(PredictError) as refused:
        resolve_model(own.uri, CFG, mnist_run, "fashion-mnist")
    assert str(refused.value) == (
        f"runs:/{mnist_run}/model (run {mnist_run}) was trained on mnist, but params.yaml's "
        "data.dataset is fashion-mnist: use a run of fashion-mnist, or set data.dataset"
    )


def _real(shared: Path, role: str, magic: int) -> np.ndarray:
    name = FILE_NAMES[role]
    return parse_idx(gunzip((shared / name).read_bytes(), name), name, magic)


@pytest.mark.slow
def test_preprocessing_reproduces_mnist_on_redrawn_real_digits(
    shared_mnist: Path, tmp_path: Path
) -> None:
    """Real test digits redrawn big, dark-on-white, are recognised about as well as the
    originals: the conversion undoes inversion, scale and position like MNIST's own."""
    x_train = _real(shared_mnist, "train_images", IMAGES_MAGIC)[:10000]
    y_train = _real(shared_mnist, "train_labels", LABELS_MAGIC)[:10000]
    x_test = _real(shared_mnist, "test_images", IMAGES_MAGIC)[:200]
    y_test = _real(shared_mnist, "test_labels", LABELS_MAGIC)[:200]
    model = MLPClassifier((64,), max_iter=15, random_state=0)
    with pytest.warns(ConvergenceWarning):
        model.fit(DIVIDE255.apply(x_train), y_train)

    direct = model.predict(DIVIDE255.apply(x_test))
    paths = []
    for i, image in enumerate(x_test):
        big = Image.fromarray(255 - image, mode="L").resize((140, 140), Image.Resampling.BICUBIC)
        canvas = Image.new("L", (220, 180), 255)
        canvas.paste(big, (i % 70, 20))  # anywhere on a white page
        paths.append(tmp_path / f"{i:03d}.png")
        canvas.save(paths[-1])
    redrawn = model.predict(DIVIDE255.apply(np.stack([load_digit(p) for p in paths])))

    direct_acc = float(np.mean(direct == y_test))
    redrawn_acc = float(np.mean(np.array(redrawn) == y_test))
    assert direct_acc >= 0.85
    assert redrawn_acc >= direct_acc - 0.05, (direct_acc, redrawn_acc)


@pytest.mark.e2e
def test_predict_with_a_standardize_run_matches_the_pipelines_test_features(
    tmp_path: Path,
) -> None:
    """`dvc repro` with encode.scaling=standardize, then `mnistflow predict --run` on the PNGs
    unpack drew of test images: the digits and scores are the model's on those rows of
    data/encoded/test.npz, which the encode stage made (not prediction's code path)."""
    mirror = tmp_path / "mirror"
    files = write_idx_dataset(mirror, digits=mnist_like_digits)
    edit = use_tiny_dataset(
        files, encode={"scaling": "standardize"}, train={"hidden_layer_sizes": [16], "max_iter": 5}
    )
    repo = copy_repo(tmp_path / "repo", edit)
    env = workspace_env(mirror)
    run(["dvc", "repro"], repo, env)

    run_id = read_json(repo / "outputs/train/run.json")["run_id"]
    X_test = load_npz(repo / "data/encoded/test.npz")["X"]
    arrays = load_npz(repo / "data/unpacked/arrays.npz", ["x_test", "y_test"])
    with (repo / "models/model.pkl").open("rb") as fh:
        model = pickle.load(fh)
    rows = list(range(10))
    pngs = [f"data/images/test/{arrays['y_test'][i]}/{i:05d}.png" for i in rows]
    out = run(["mnistflow", "predict", "--run", run_id, *pngs], repo, env).stdout
    printed = [line.split("\t") for line in out.splitlines()]

    expected = model.predict_proba(X_test[rows])
    assert [p for p, _, _ in printed] == pngs
    assert [int(d) for _, d, _ in printed] == list(expected.argmax(axis=1))
    assert [float(s) for _, _, s in printed] == pytest.approx(expected.max(axis=1), abs=6e-5)
    # The statistics matter: the same images scaled by /255 score differently.
    unscaled = model.predict_proba(flatten(arrays["x_test"][rows]) / np.float32(255))
    assert not np.allclose(unscaled.max(axis=1), expected.max(axis=1), atol=1e-3)


@pytest.mark.unit
def test_a_run_with_a_bare_sklearn_model_is_refused_not_unpickled(
    store: Store, tmp_path: Path
) -> None:
    """Runs from before the served model hold a cloudpickled sklearn model answering one-hot
    rows: predict says so (and never unpickles it)."""
    import mlflow.sklearn

    own = copy_store(store, tmp_path / "store")
    with runs.mlflow_run(own.uri, own.experiment_id, run_name="old") as run:
        mlflow.sklearn.log_model(tiny_model((4,)), name="model", serialization_format="cloudpickle")
    with pytest.raises(PredictError, match=r"not a model of raw images.*retrain"):
        load_run_model(own.uri, f"runs:/{run.run_id}/model")
