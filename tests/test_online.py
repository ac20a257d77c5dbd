"""Tests for mnistflow.data.online: each epoch's features and the feed that prepares them."""

from __future__ import annotations

import os
import signal

import numpy as np
import psutil
import pytest

from mnistflow.config import AugmentConfig
from mnistflow.data import augment as aug
from mnistflow.data.encode import Encoding, flatten, pixel_stats
from mnistflow.data.online import EpochFeed, OnlineData, epoch_features
from tests.helpers import synthetic_digits


def online_data(encoding: Encoding, background: bool = False, **augment: float) -> OnlineData:
    raw = {
        "copies": 0,
        "max_shift": 2,
        "max_rotation": 10.0,
        "elastic_alpha": 34.0,
        "elastic_sigma": 4.0,
        "seed": 0,
    } | augment
    cfg = AugmentConfig.from_section(raw, "encode.augment")
    return OnlineData(encoding, (28, 28), cfg, background)


def base(n: int = 130) -> np.ndarray:
    images, _ = synthetic_digits(n, seed=4)
    return flatten(images).astype(np.float32)


def encodings() -> list[Encoding]:
    mean, std = pixel_stats(base())
    return [Encoding("divide255"), Encoding("none"), Encoding("standardize", False, mean, std)]


@pytest.mark.unit
@pytest.mark.parametrize("encoding", encodings(), ids=lambda e: e.scaling)
def test_epoch_features_are_the_scaled_epoch_batch_of_the_unscaled_rows(
    encoding: Encoding,
) -> None:
    X = encoding.scale(base())
    data = online_data(encoding)
    images = encoding.unscale(X).reshape(-1, 28, 28)
    for epoch in (1, 2):
        batch, _ = aug.epoch_batch(images, np.zeros(len(X)), epoch, data.augment)
        expected = encoding.scale(flatten(batch))
        got = epoch_features(X, data, epoch)
        assert got.dtype == np.float32
        assert got.shape == X.shape
        assert np.array_equal(got, expected)
    assert not np.array_equal(epoch_features(X, data, 1), epoch_features(X, data, 2))


@pytest.mark.unit
def test_epoch_features_check_their_shapes() -> None:
    data = online_data(Encoding("divide255"))
    with pytest.raises(ValueError, match="not images of 28x28"):
        epoch_features(np.zeros((3, 10), np.float32), data, 1)
    with pytest.raises(ValueError, match="out is float64"):
        epoch_features(np.zeros((3, 784), np.float32), data, 1, out=np.zeros((3, 784)))


@pytest.mark.unit
def test_feed_in_this_process_gives_each_epoch() -> None:
    X = base() / np.float32(255)
    data = online_data(Encoding("divide255"))
    with EpochFeed(X, data, epochs=2) as feed:
        for epoch in (1, 2):
            assert np.array_equal(feed.get(epoch), epoch_features(X, data, epoch))


def children() -> list[psutil.Process]:
    return psutil.Process(os.getpid()).children(recursive=True)


@pytest.mark.e2e
def test_feed_on_a_second_process_gives_the_same_epochs_and_stops_its_child() -> None:
    X = base(2 * aug.CHUNK + 3) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with EpochFeed(X, data, epochs=3) as feed:
        assert len(set(children()) - before) == 1
        for epoch in (1, 2, 3):
            assert np.array_equal(feed.get(epoch), epoch_features(X, data, epoch))
        with pytest.raises(ValueError, match="expected epoch 4"):
            feed.get(3)  # asked again: refused, instead of waiting for ever
    assert set(children()) == before


@pytest.mark.e2e
def test_feed_stops_a_busy_child_when_the_block_is_left_by_an_exception() -> None:
    X = base(3 * aug.CHUNK) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with pytest.raises(KeyboardInterrupt), EpochFeed(X, data, epochs=5):
        raise KeyboardInterrupt  # the child is busy with epoch 1
    assert set(children()) == before


@pytest.mark.e2e
def test_a_dead_child_is_a_clear_error() -> None:
    X = base(3 * aug.CHUNK) / np.float32(255)
    data = online_data(Encoding("divide255"), background=True)
    before = set(children())
    with EpochFeed(X, data, epochs=2) as feed:
        (child,) = set(children()) - before
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(Exception, match=r"died preparing epoch 1 \(exit code -9"):
            feed.get(1)
