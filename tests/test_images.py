"""jaxrf.load_images: folders, globs and lists of real photographs; bad files named in errors.

Expected values are hand-made: files written here with known pixels (a 6x4 ramp whose centre
crop and normalisation are worked out by hand), and matplotlib's bundled photograph
grace_hopper.jpg, which is 512 wide and 600 high (so shorter side 256 gives 256x300).
"""

from __future__ import annotations

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

import jaxrf

PHOTO = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture
def folder(tmp_path):
    """rgb_a.png: 4 rows x 6 cols, R = 10 * col, G = 40 * row, B = 255; rgb_b.png: all 51."""
    rows, cols = np.mgrid[0:4, 0:6]
    ramp = np.stack([10 * cols, 40 * rows, np.full_like(rows, 255)], axis=-1).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "rgb_a.png")
    Image.fromarray(np.full((4, 6, 3), 51, np.uint8)).save(tmp_path / "rgb_b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_crop_and_normalisation_by_hand(folder):
    stream = jaxrf.load_images(folder, crop=(2, 2), mean=0.2, std=0.5)
    assert [p.name for p in stream.paths] == ["rgb_a.png", "rgb_b.png"]
    (batch,) = list(stream)
    assert batch.dtype == np.float32 and batch.shape == (2, 2, 2, 3)
    # Centre 2x2 of a 4x6 image: rows 1-2, cols 2-3. R = 10 * col / 255 etc.
    want_r = (np.array([[20, 30], [20, 30]]) / 255 - 0.2) / 0.5
    want_g = (np.array([[40, 40], [80, 80]]) / 255 - 0.2) / 0.5
    np.testing.assert_allclose(batch[0, ..., 0], want_r, rtol=1e-6)
    np.testing.assert_allclose(batch[0, ..., 1], want_g, rtol=1e-6)
    np.testing.assert_allclose(batch[0, ..., 2], (1 - 0.2) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(batch[1], (0.2 - 0.2) / 0.5, atol=1e-6)  # 51 / 255 = 0.2


def test_glob_list_batches_and_per_channel_mean(folder):
    stream = jaxrf.load_images(
        [str(folder / "rgb_b.png"), str(folder / "*.png")], batch_size=2, mean=(0.2, 0, 0)
    )
    assert [p.name for p in stream.paths] == ["rgb_b.png", "rgb_a.png", "rgb_b.png"]
    assert len(stream) == 2 and [b.shape[0] for b in stream] == [2, 1]  # re-iterable
    first = next(iter(stream))
    np.testing.assert_allclose(first[0, 0, 0], [0.0, 0.2, 0.2], atol=1e-6)
    assert "3 image(s)" in stream.describe() and "rgb_a.png" in stream.describe()


def test_bundled_photograph_resized_on_the_shorter_side():
    stream = jaxrf.load_images(PHOTO, size=256)
    assert stream.array().shape == (1, 300, 256, 3)  # 600x512 -> 300x256
    cropped = jaxrf.load_images([PHOTO], size=256, crop=224).array()
    assert cropped.shape == (1, 224, 224, 3)
    assert 0.0 <= cropped.min() and cropped.max() <= 1.0 and cropped.std() > 0.1


def test_grey_where_rgb_is_expected(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 102, np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"grey\.png.*colour mode 'L', not 'RGB'.*convert=True"):
        list(jaxrf.load_images(path))
    rgb = jaxrf.load_images(path, convert=True).array()
    assert rgb.shape == (1, 8, 8, 3) and np.allclose(rgb, 0.4)
    assert jaxrf.load_images(path, channels=1).array().shape == (1, 8, 8, 1)


def test_corrupt_and_tiny_files_are_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image '.*broken\.jpg'"):
        list(jaxrf.load_images(tmp_path / "broken.jpg"))
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(
        ValueError, match=r"tiny\.png' is 5x7 after resizing, smaller than crop 8x8"
    ):
        list(jaxrf.load_images(tmp_path / "tiny.png", crop=8))


def test_mixed_sizes_need_a_crop(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png' is 6x6 but earlier images are 4x4"):
        list(jaxrf.load_images(tmp_path))
    assert jaxrf.load_images(tmp_path, crop=4).array().shape == (2, 4, 4, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"paths": "nowhere/*.png"}, r"pattern 'nowhere/\*\.png' matches no file"),
        ({"paths": "missing.jpg"}, r"image file 'missing.jpg' does not exist"),
        ({"paths": []}, r"empty list"),
        ({"paths": PHOTO, "channels": 2}, r"`channels` \(=2\) must be 3"),
        ({"paths": PHOTO, "crop": (0, 4)}, r"`crop` \(=\(0, 4\)\) must be a positive int"),
        ({"paths": PHOTO, "mean": (1, 2)}, r"`mean` \(=\(1, 2\)\) must be one number or 3"),
        ({"paths": PHOTO, "std": 0}, r"`std` \(=0\) must be positive"),
        ({"paths": PHOTO, "batch_size": 0}, r"`batch_size` \(=0\)"),
    ],
    ids=["glob", "file", "empty", "channels", "crop", "mean", "std", "batch"],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxrf.load_images(**kwargs)


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match=r"holds no \.png/\.jpg/\.jpeg file"):
        jaxrf.load_images(tmp_path)


def test_exact_size(folder):
    stream = jaxrf.load_images(folder / "rgb_a.png", size=(10, 20))
    assert stream.array().shape == (1, 10, 20, 3)
    # B = 255 everywhere survives bilinear resizing exactly.
    np.testing.assert_allclose(stream.array()[..., 2], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"`size` \(=\(10, 0\)\) must be a positive int"):
        jaxrf.load_images(folder, size=(10, 0))
