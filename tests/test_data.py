"""Data: scaling, dequantization, flips, embedded sets, sources (tfds via mock_data, folders,
npz, tfrecords), deterministic resumable shuffling, eval coverage, multi-process shards, errors.

tfds: ``tfds.testing.mock_data`` works with ``tfds.data_source(..., download=False)`` in this
tfds version (random examples of the dataset's real feature spec), so the tfds path is tested
with it directly. Nothing downloads: the unprepared-dataset test checks the data directory
stays empty.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from scoresde import data as sd_data
from scoresde.data import (
    ArraySource,
    DatasetNotPreparedError,
    EvalLoader,
    TrainLoader,
)

GEOM1 = dict(local_device_count=1, process_index=0, process_count=1)


def _index_source(n: int) -> ArraySource:
    """Non-image examples whose value is their index, to track which examples a batch holds."""
    return ArraySource(np.arange(n, dtype=np.float32)[:, None])


def _ids(batch) -> np.ndarray:
    return batch["image"].reshape(-1).astype(int)


# --- transforms ---------------------------------------------------------------------------


@pytest.mark.parametrize("centered", [False, True])
def test_scale_round_trip(centered, np_rng):
    x = np_rng.random((4, 3, 3, 2)).astype(np.float32)
    y = sd_data.scale(x, centered)
    lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
    assert y.min() >= lo and y.max() <= hi
    # x -> 2x - 1 -> (y + 1) / 2 in float32: a few ulps of 1.
    np.testing.assert_allclose(sd_data.inverse_scale(y, centered), x, atol=1e-6)
    np.testing.assert_array_equal(sd_data.scale(np.array([0.0, 1.0]), True), [-1.0, 1.0])


def test_dequantization_stays_in_its_bin(np_rng):
    x = np.arange(256, dtype=np.uint8).repeat(64)
    # the worst case: noise right under 1, which float32 rounding would carry into the next bin
    u = np.concatenate([np_rng.random(x.size - 256), np.full(256, np.nextafter(1.0, 0.0))])
    y = sd_data.to_unit_interval(x, u)
    assert y.dtype == np.float32 and y.min() >= 0.0 and y.max() < 1.0
    np.testing.assert_array_equal(np.floor(y * 256).astype(int), x)  # exact: 256 is 2^8
    np.testing.assert_array_equal(sd_data.to_unit_interval(np.array([0, 255], np.uint8)), [0, 1])
    with pytest.raises(TypeError, match="uint8"):
        sd_data.to_unit_interval(np.zeros(3, np.float32))


def test_random_flip_flips_about_half(np_rng):
    images = np_rng.integers(0, 256, (1000, 2, 5, 1), dtype=np.uint8)
    out = sd_data.random_flip(images, np.random.default_rng(0))
    same = (out == images).all(axis=(1, 2, 3))
    mirrored = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    # Binomial(1000, 1/2): std 15.8; 5 std keeps a false failure below 1e-6.
    assert abs(int(mirrored.sum()) - 500) < 80


def test_resizes_and_crops():
    img = np.zeros((218, 178, 3), np.uint8)
    assert sd_data.preprocess_image(img, 64, 3, "celeba").shape == (64, 64, 3)
    assert sd_data.preprocess_image(img, 128, 3, "lsun").shape == (128, 128, 3)
    assert sd_data.preprocess_image(img, 32, 1, "crop_resize").shape == (32, 32, 1)
    ramp = np.tile(np.arange(8, dtype=np.uint8)[None, :, None], (8, 1, 1))
    np.testing.assert_array_equal(sd_data.central_crop(ramp, 4)[0, :, 0], [2, 3, 4, 5])
    flat = np.full((20, 30, 3), 77, np.uint8)  # a constant image stays constant
    assert (sd_data.crop_resize(flat, 8) == 77).all()
    with pytest.raises(ValueError, match="method"):
        sd_data.preprocess_image(img, 8, 3, "stretch")


# --- embedded data ------------------------------------------------------------------------


def test_digits():
    train, test = sd_data.digits_images("train", 8), sd_data.digits_images("test", 8)
    assert train.shape == (1500, 8, 8, 1) and test.shape == (297, 8, 8, 1)
    assert train.dtype == np.uint8 and train.max() == 255
    # 17 grey levels v -> round(255 v / 16)
    assert set(np.unique(train)) <= {round(255 * v / 16) for v in range(17)}
    padded = sd_data.digits_images("test", 16, mode="pad")
    np.testing.assert_array_equal(padded[:, 4:12, 4:12], test)
    assert padded[:, :4].max() == 0 and padded[:, 12:].max() == 0
    assert sd_data.digits_images("test", 16).shape == (297, 16, 16, 1)
    with pytest.raises(ValueError, match="image_size"):
        sd_data.digits_images("train", 4)


def test_toy2d():
    board = sd_data.toy2d_samples("checkerboard", 5000, seed=1)
    col, row = np.floor(board[:, 0] + 2), np.floor(board[:, 1] + 2)
    assert np.abs(board).max() <= 2 and ((col + row) % 2 == 0).all()
    np.testing.assert_array_equal(board, sd_data.toy2d_samples("checkerboard", 5000, seed=1))
    moons = sd_data.toy2d_samples("two_moons", 20000)
    # centred by construction; the mean of 20000 points of std ~0.9 has std ~0.007.
    np.testing.assert_allclose(moons.mean(0), 0.0, atol=0.04)
    mix = sd_data.toy2d_samples("gaussian_mixture", 4000)
    means = np.asarray(sd_data.toy2d_mixture().means)
    nearest = np.linalg.norm(mix[:, None] - means[None], axis=-1).min(1)
    # distance to the own mode is Rayleigh(0.2); P(> 1.2) = exp(-18) per point.
    assert nearest.max() < 1.2
    with pytest.raises(ValueError, match="checkerboard"):
        sd_data.toy2d_samples("spiral", 10)


# --- loaders ------------------------------------------------------------------------------


def test_train_loader_shapes_and_scaling():
    images = np.full((10, 4, 4, 1), 255, np.uint8)
    loader = TrainLoader(
        ArraySource(images), 4, centered=True, local_device_count=2, process_index=0,
        process_count=1,
    )  # fmt: skip
    batch = next(loader)
    assert batch["image"].shape == (2, 2, 4, 4, 1) and batch["image"].dtype == np.float32
    assert batch["image_uint8"].dtype == np.uint8
    np.testing.assert_array_equal(batch["image"], 1.0)  # 255 -> 1 -> centered 1
    deq = TrainLoader(ArraySource(images), 4, uniform_dequantization=True, **GEOM1)
    x = next(deq)["image"]
    assert (x >= 255 / 256).all() and (x < 1).all()


def test_shuffle_is_deterministic_and_epochs_cover():
    n, b = 23, 5
    a = TrainLoader(_index_source(n), b, seed=3, **GEOM1)
    c = TrainLoader(_index_source(n), b, seed=3, **GEOM1)
    first = [_ids(next(a)) for _ in range(a.steps_per_epoch)]
    assert all((x == _ids(next(c))).all() for x in first)
    seen = np.concatenate(first)
    assert len(set(seen.tolist())) == a.steps_per_epoch * b  # no repeats within an epoch
    second = np.concatenate([_ids(next(a)) for _ in range(a.steps_per_epoch)])
    assert not (second == seen).all()  # a new order each epoch
    other = TrainLoader(_index_source(n), b, seed=4, **GEOM1)
    assert not (_ids(next(other)) == first[0]).all()


def test_state_restore_gives_identical_continuation():
    images = np.random.default_rng(0).integers(0, 256, (13, 4, 4, 3), dtype=np.uint8)
    kwargs = dict(seed=7, random_flip=True, uniform_dequantization=True, **GEOM1)
    a = TrainLoader(ArraySource(images), 4, **kwargs)
    for _ in range(5):  # past the epoch boundary (3 steps per epoch)
        next(a)
    saved = json.loads(json.dumps(a.state()))
    expected = [next(a) for _ in range(4)]
    b = TrainLoader(ArraySource(images), 4, **kwargs)
    b.restore(saved)
    for e in expected:
        got = next(b)
        np.testing.assert_array_equal(got["image"], e["image"])
        np.testing.assert_array_equal(got["image_uint8"], e["image_uint8"])
    wrong = dict(saved, seed=8)
    with pytest.raises(ValueError, match="seed"):
        b.restore(wrong)
    with pytest.raises(ValueError, match="lacks"):
        b.restore({"epoch": 0})


def test_process_shards_disjoint_and_covering():
    n, b, procs = 40, 12, 3
    loaders = [
        TrainLoader(_index_source(n), b, seed=1, local_device_count=2, process_index=p,
                    process_count=procs)
        for p in range(procs)
    ]  # fmt: skip
    for _ in range(4):
        parts = [next(loader) for loader in loaders]
        assert all(p["image"].shape == (2, 2, 1) for p in parts)
        ids = np.concatenate([_ids(p) for p in parts])
        assert len(set(ids.tolist())) == b  # disjoint, the whole global batch
    reference = TrainLoader(_index_source(n), b, seed=1, **GEOM1)
    for _ in range(4):
        whole = _ids(next(reference))
    assert set(whole.tolist()) == set(ids.tolist())  # the same global batch as one process


@pytest.mark.parametrize("procs", [1, 2])
def test_eval_covers_each_example_once(procs):
    n, b = 23, 8
    counts = np.zeros(n, int)
    for p in range(procs):
        loader = EvalLoader(_index_source(n), b, local_device_count=2, process_index=p,
                            process_count=procs)  # fmt: skip
        assert len(loader) == 3
        for batch in loader:
            assert batch["mask"].shape == batch["image"].shape[:2]
            np.add.at(counts, _ids(batch)[batch["mask"].reshape(-1)], 1)
    np.testing.assert_array_equal(counts, 1)


def test_eval_images_in_order_with_uint8():
    images = np.random.default_rng(1).integers(0, 256, (5, 2, 2, 1), dtype=np.uint8)
    batches = list(EvalLoader(ArraySource(images), 4, centered=True, **GEOM1))
    raw = np.concatenate([b["image_uint8"].reshape(-1, 2, 2, 1) for b in batches])
    mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
    np.testing.assert_array_equal(raw[mask], images)
    x = batches[0]["image"].reshape(-1, 2, 2, 1)
    np.testing.assert_allclose(x, images[:4] / 255 * 2 - 1, atol=1e-6)  # float32 rounding


def test_bad_batch_sizes():
    with pytest.raises(ValueError, match="does not divide over 1 process.* x 4 local device"):
        TrainLoader(_index_source(20), 6, local_device_count=4, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="does not divide"):
        EvalLoader(_index_source(20), 6, local_device_count=1, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="larger than the dataset"):
        TrainLoader(_index_source(3), 4, **GEOM1)
    with pytest.raises(ValueError, match="uint8 HWC images only"):
        TrainLoader(_index_source(8), 4, random_flip=True, **GEOM1)


# --- sources ------------------------------------------------------------------------------


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPreparedError) as e:
        sd_data.tfds_source("cifar10", "train", 32, 3, data_dir=tmp_path)
    msg = str(e.value)
    assert "tfds build cifar10 --file_format=array_record" in msg
    assert "TensorFlow" in msg and "download_and_prepare" in msg
    assert not any(tmp_path.iterdir())  # nothing was downloaded or written


@pytest.mark.parametrize(
    "dataset,extra,channels",
    [("CIFAR10", {}, 3), ("CELEBA", {}, 3), ("LSUN", {"category": "bedroom"}, 3),
     ("MNIST", {}, 1), ("SVHN", {}, 3)],
)  # fmt: skip
def test_tfds_datasets_with_mock_data(dataset, extra, channels):
    config = {
        "seed": 0,
        "training": {"batch_size": 4},
        "eval": {"batch_size": 4},
        "data": {"dataset": dataset, "image_size": 16, "num_channels": channels,
                 "centered": True, "random_flip": True, **extra},
    }  # fmt: skip
    with tfds.testing.mock_data(num_examples=6):
        batch = next(sd_data.train_loader_from_config(config, **GEOM1))
        assert batch["image"].shape == (1, 4, 16, 16, channels)
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        loader = sd_data.eval_loader_from_config(config, "test", **GEOM1)
        assert sum(int(b["mask"].sum()) for b in loader) == 6
    assert "tensorflow" not in sys.modules  # reading never imports TensorFlow


def test_folder_and_npz_sources(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / "imgs" / split).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / split / f"{i}.png")
    src = sd_data.folder_source(tmp_path / "imgs", 8, 3, split="test")
    assert len(src) == 2 and src[0].shape == (8, 8, 3) and src[0].dtype == np.uint8
    assert len(sd_data.folder_source(tmp_path / "imgs", 8, 1)) == 5
    np.savez(tmp_path / "x.npz", train=rng.integers(0, 256, (7, 8, 8), dtype=np.uint8))
    config = {"training": {"batch_size": 2}, "seed": 0,
              "data": {"dataset": "npz", "path": str(tmp_path / "x.npz"), "image_size": 8,
                       "num_channels": 1}}  # fmt: skip
    assert next(sd_data.train_loader_from_config(config, **GEOM1))["image"].shape == (
        1, 2, 8, 8, 1,
    )  # fmt: skip
    with pytest.raises(FileNotFoundError):
        sd_data.folder_source(tmp_path / "missing", 8, 3)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _example(image_chw: np.ndarray) -> bytes:
    """A ``tf.train.Example`` with the reference's ``shape`` and ``data`` features."""
    shape = _len_field(3, _len_field(1, b"".join(_varint(s) for s in image_chw.shape)))
    data = _len_field(1, _len_field(1, image_chw.tobytes()))
    entries = [_len_field(1, b"shape") + _len_field(2, shape),
               _len_field(1, b"data") + _len_field(2, data)]  # fmt: skip
    return _len_field(1, b"".join(_len_field(1, e) for e in entries))


def test_reference_tfrecords(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 6, 4), dtype=np.uint8)  # CHW, as the reference stores
    path = tmp_path / "r03.tfrecords"
    with open(path, "wb") as f:
        for img in images:
            rec = _example(img)
            f.write(struct.pack("<Q", len(rec)) + b"\0" * 4 + rec + b"\0" * 4)
    records = sd_data.TFRecordRecords(path)
    assert len(records) == 3
    np.testing.assert_array_equal(records[1]["image"], images[1].transpose(1, 2, 0))
    config = {"data": {"dataset": "FFHQ", "tfrecords_path": str(path), "image_size": 4,
                       "num_channels": 3}}  # fmt: skip
    src = sd_data.source_from_config(config, "train")
    assert src[2].shape == (4, 4, 3)


def test_config_errors():
    with pytest.raises(ValueError, match="data.dataset must be one of.*CIFAR10.*DIGITS"):
        sd_data.source_from_config({"data": {"dataset": "IMAGENET"}})
    with pytest.raises(ValueError, match="tfrecords_path"):
        sd_data.source_from_config(
            {"data": {"dataset": "CelebAHQ", "image_size": 8, "num_channels": 3}}
        )
    with pytest.raises(ValueError, match="split"):
        sd_data.source_from_config({"data": {"dataset": "DIGITS"}}, "validation")
    toy = {"seed": 0, "training": {"batch_size": 8},
           "data": {"dataset": "TOY2D", "toy": "two_moons", "num_samples": 100}}  # fmt: skip
    assert next(sd_data.train_loader_from_config(toy, **GEOM1))["image"].shape == (1, 8, 2)


def test_flat_batches_and_run_training_contract():
    src = _index_source(17)
    flat = TrainLoader(src, 8, seed=2, local_device_count=2, process_index=1, process_count=2,
                       device_axis=False)  # fmt: skip
    shaped = TrainLoader(src, 8, seed=2, local_device_count=2, process_index=1, process_count=2)
    b0, s0 = next(flat.batches(None))
    np.testing.assert_array_equal(b0["image"].reshape(-1), _ids(next(shaped)))
    assert b0["image"].shape == (4, 1) and s0 == flat.state() and s0["index"] == 1
    # resuming from the state after a batch continues with the next one
    again = TrainLoader(src, 8, seed=2, local_device_count=2, process_index=1, process_count=2)
    nxt, _ = next(again.batches(s0))
    np.testing.assert_array_equal(nxt["image"].reshape(-1), _ids(next(shaped)))
    ev = next(iter(EvalLoader(src, 8, device_axis=False, **GEOM1)))
    assert ev["image"].shape == (8, 1) and ev["mask"].shape == (8,)
