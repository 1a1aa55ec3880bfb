"""A small streaming image loader: PNG/JPEG files -> float32 NHWC batches for the ERF.

No dataset framework: files are read one at a time with Pillow (which matplotlib depends on),
resized, centre-cropped, normalised and stacked into batches of ``batch_size``. The stream can
be iterated again (every pass re-reads the files), so it also serves Luo's averaging over
several weight draws.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._axis import format_axes

#: File suffixes taken from a folder (case-insensitive).
SUFFIXES = (".png", ".jpg", ".jpeg")
_MODES = {3: "RGB", 1: "L"}


def _pair(value, argument: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int | np.integer) and v > 0 for v in pair):
        raise ValueError(
            f"`{argument}` (={value!r}) must be a positive int or a pair (height, width) of them."
        )
    return int(pair[0]), int(pair[1])


def _per_channel(value, default: float, channels: int, argument: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(default if value is None else value, np.float32))
    if values.ndim != 1 or len(values) not in (1, channels):
        raise ValueError(
            f"`{argument}` (={value!r}) must be one number or {channels} (one per channel)."
        )
    if argument == "std" and not np.all(values > 0):
        raise ValueError(f"`std` (={value!r}) must be positive.")
    return np.broadcast_to(values, (channels,)).copy()


def image_paths(source) -> list[Path]:
    """The files ``source`` names, in a fixed order.

    Args:
        source: a folder (its ``.png``/``.jpg``/``.jpeg`` files, sorted by name, not recursive),
            a glob pattern (``"photos/*.jpg"``, matches sorted), a single file, or a list of
            any of these (concatenated in the given order).

    Raises:
        ValueError: nothing matches, or a named file does not exist.
    """
    if isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        if os.path.isdir(text):
            found = [p for p in sorted(Path(text).iterdir()) if p.suffix.lower() in SUFFIXES]
            if not found:
                raise ValueError(f"image folder {text!r} holds no {'/'.join(SUFFIXES)} file.")
            return found
        if glob.has_magic(text):
            found = [Path(p) for p in sorted(glob.glob(text)) if os.path.isfile(p)]
            if not found:
                raise ValueError(f"image pattern {text!r} matches no file.")
            return found
        if not os.path.isfile(text):
            raise ValueError(f"image file {text!r} does not exist.")
        return [Path(text)]
    paths = [p for item in source for p in image_paths(item)]
    if not paths:
        raise ValueError("`paths` is an empty list; give a folder, a glob or image files.")
    return paths


def read_image(path, channels: int = 3, size=None, crop=None, convert: bool = False) -> np.ndarray:
    """One image as float32 ``(H, W, channels)`` with values in ``[0, 1]``, resized and cropped.

    Args:
        path: a PNG or JPEG file.
        channels: 3 (RGB) or 1 (grey).
        size: the shorter side after resizing (an int; bilinear, antialiased), or an exact
            ``(height, width)``; None keeps the file's size.
        crop: ``(height, width)`` (or one int) cut from the centre after resizing: rows
            ``[(H - h) // 2, (H - h) // 2 + h)``, likewise columns.
        convert: False (default): a file whose colour mode is not ``channels`` (grey where RGB
            is expected, RGBA, palette, CMYK, ...) raises. True: convert it with Pillow (grey
            is repeated into R, G and B; alpha is dropped).

    Raises:
        ValueError: unreadable file, wrong colour mode (without ``convert``), or an image
            smaller than ``crop``; the message names the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None
    want = _MODES[channels]
    if image.mode != want:
        if not convert:
            raise ValueError(
                f"image {str(path)!r} has colour mode {image.mode!r}, not {want!r} "
                f"(channels={channels}); pass convert=True (CLI: --convert) to convert it, "
                f"or channels={1 if channels == 3 else 3}."
            )
        image = image.convert(want)
    image = _resize(image, size)
    if crop is not None:
        image = _centre_crop(image, _pair(crop, "crop"), path)
    array = np.asarray(image, np.float32) / np.float32(255)
    return array.reshape(array.shape[0], array.shape[1], channels)


def _resize(image, size):
    from PIL import Image

    if size is None:
        return image
    width, height = image.size
    if isinstance(size, int | np.integer):
        scale = size / min(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
    else:
        target = (_pair(size, "size")[1], _pair(size, "size")[0])
    return image if target == image.size else image.resize(target, Image.BILINEAR)


def _centre_crop(image, crop: tuple[int, int], path):
    height, width = crop
    if image.height < height or image.width < width:
        raise ValueError(
            f"image {str(path)!r} is {image.height}x{image.width} after resizing, smaller "
            f"than crop {height}x{width}; give a larger `size` (CLI: --size) or a smaller crop."
        )
    top, left = (image.height - height) // 2, (image.width - width) // 2
    return image.crop((left, top, left + width, top + height))


@dataclass(frozen=True, eq=False)
class ImageStream:
    """A re-iterable stream of float32 NHWC batches read from :attr:`paths` (see
    :func:`load_images`). ``len()`` is the number of batches."""

    paths: tuple[Path, ...]
    size: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    mean: np.ndarray
    std: np.ndarray
    batch_size: int
    channels: int
    convert: bool

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        shape, batch = None, []
        for path in self.paths:
            image = read_image(path, self.channels, self.size, self.crop, self.convert)
            if shape is not None and image.shape != shape:
                raise ValueError(
                    f"image {str(path)!r} is {image.shape[0]}x{image.shape[1]} but earlier "
                    f"images are {shape[0]}x{shape[1]}; give `crop` (CLI: --crop) so every "
                    "batch has one shape."
                )
            shape = image.shape
            batch.append((image - self.mean) / self.std)
            if len(batch) == self.batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    def describe(self, limit: int = 5) -> str:
        """One line naming the images and the preprocessing, e.g. for a command's output."""
        names = ", ".join(p.name for p in self.paths[:limit])
        more = f", ... ({len(self.paths)} files)" if len(self.paths) > limit else ""
        folders = sorted({str(p.parent) for p in self.paths})
        where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
        steps = [f"shorter side {self.size}" if isinstance(self.size, int) else None]
        steps += [f"centre crop {self.crop[0]}x{self.crop[1]}" if self.crop else None]
        mean, std = (format_axes([f"{v:g}" for v in a], ", ", "()") for a in (self.mean, self.std))
        steps += [f"mean {mean}, std {std}"]
        prep = "; ".join(s for s in steps if s)
        return f"{len(self.paths)} image(s) from {where}: {names}{more} ({prep})"

    def array(self) -> np.ndarray:
        """All images at once, ``(N, H, W, channels)``."""
        return np.concatenate(list(self))


def load_images(
    paths,
    size: int | tuple[int, int] | None = None,
    crop: int | tuple[int, int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    batch_size: int = 8,
    channels: int = 3,
    convert: bool = False,
) -> ImageStream:
    """Stream PNG/JPEG images as float32 NHWC batches: resize, centre-crop, normalise.

    Each image is read with Pillow, scaled to ``[0, 1]`` (pixel / 255), resized so that its
    shorter side is ``size`` (or to exactly ``size = (height, width)``), cut to ``crop`` at the
    centre, and normalised per channel as ``(x - mean) / std`` (ImageNet:
    ``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``; MTCNN's ``(p - 127.5) / 128``
    is ``mean=0.5, std=128/255``). Files are read lazily, ``batch_size`` at a time, every time
    the stream is iterated; nothing is cached.

    Args:
        paths: a folder, a glob pattern, one file, or a list of these (see :func:`image_paths`).
        size: shorter side after resizing, or an exact ``(height, width)``; None: keep.
        crop: centre crop ``(height, width)`` or one int; None: keep (then every image must
            have the same size).
        mean, std: one number or one per channel (defaults 0 and 1).
        batch_size: images per batch (the last batch may be smaller).
        channels: 3 (RGB, default) or 1 (grey).
        convert: convert images of another colour mode (grey, RGBA, palette) instead of
            raising; grey becomes R = G = B.

    Returns:
        :class:`ImageStream`; ``.paths`` lists the files used, in order; ``.describe()`` says
        which, for a report.

    Raises:
        ValueError: bad arguments or no files now; while iterating, a bad file (unreadable,
            wrong colour mode, smaller than ``crop``, a size differing from the first image's)
            raises a ValueError naming it.

    Example:
        >>> import matplotlib.cbook, jaxrf
        >>> photo = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        >>> stream = jaxrf.load_images([photo], size=256, crop=224)
        >>> [batch.shape for batch in stream], stream.paths[0].name
        ([(1, 224, 224, 3)], 'grace_hopper.jpg')
    """
    if channels not in _MODES:
        raise ValueError(f"`channels` (={channels!r}) must be 3 (RGB) or 1 (grey).")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` (={batch_size!r}) must be a positive int.")
    if size is not None and not isinstance(size, int | np.integer):
        _pair(size, "size")
    elif size is not None and size < 1:
        raise ValueError(f"`size` (={size!r}) must be a positive int or (height, width).")
    return ImageStream(
        tuple(image_paths(paths)),
        size if size is None or isinstance(size, int | np.integer) else _pair(size, "size"),
        _pair(crop, "crop"),
        _per_channel(mean, 0.0, channels, "mean"),
        _per_channel(std, 1.0, channels, "std"),
        batch_size,
        channels,
        convert,
    )
