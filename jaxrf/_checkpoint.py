"""Checkpoints of a running ERF: the running sums, the count and the position in the stream.

A checkpoint is one ``.npz`` file holding, for an :func:`jaxrf.effective_receptive_field` run,
the float64 sum of the gradient maps of every probed layer, the number of samples summed and
skipped, the position in the input stream (weight draw, batches consumed in that draw, samples
consumed in that draw) and a *fingerprint* of the run's arguments. It is written atomically
(to a temporary file in the same folder, then ``os.replace``), so a run killed at any moment
leaves either the previous checkpoint or the new one, never a torn file. A rerun with the same
arguments resumes after the last saved batch; the sums are added in the same order, so the
result is the uninterrupted run's to the last bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Progress:
    """The running state of an ERF: sums per layer, counts and the position in the stream.

    Attributes:
        sums: float64 sum of the maps, one per probed layer (None before the first batch).
        count: samples summed (all draws together).
        skipped: samples left out for NaN/inf gradients.
        draw: the weight draw being run.
        batch: batches of that draw already consumed.
        seen: samples of that draw already consumed.
    """

    sums: list | None = field(default=None, repr=False)
    count: int = 0
    skipped: int = 0
    draw: int = 0
    batch: int = 0
    seen: int = 0

    def add(self, totals, kept: int, bad: int, size: int) -> None:
        """Add one batch: ``totals`` (one map per layer), ``kept``/``bad`` samples of ``size``."""
        totals = [np.asarray(t, np.float64) for t in totals]
        self.sums = (
            totals if self.sums is None else [s + t for s, t in zip(self.sums, totals, strict=True)]
        )
        self.count += int(kept)
        self.skipped += int(bad)
        self.batch += 1
        self.seen += int(size)

    def next_draw(self) -> None:
        self.draw, self.batch, self.seen = self.draw + 1, 0, 0


def fingerprint(fields: dict) -> str:
    """A canonical JSON text of ``fields`` (what must match for a checkpoint to be resumed)."""
    return json.dumps(fields, sort_keys=True, default=str)


def digest(*parts) -> str:
    """SHA-256 of the bytes of arrays and the text of everything else, in order."""
    h = hashlib.sha256()
    for part in parts:
        if hasattr(part, "dtype") and hasattr(part, "shape"):
            a = np.ascontiguousarray(np.asarray(part))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(str(part).encode())
    return h.hexdigest()


def save(path, progress: Progress, print_: str) -> None:
    """Write ``progress`` and the fingerprint ``print_`` to ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    arrays = {f"sum{k}": s for k, s in enumerate(progress.sums or [])}
    state = np.array(
        [progress.count, progress.skipped, progress.draw, progress.batch, progress.seen], np.int64
    )
    fd, tmp = tempfile.mkstemp(prefix=".erf-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, state=state, fingerprint=np.array(print_), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path, print_: str) -> Progress | None:
    """The :class:`Progress` saved at ``path`` (None if there is no file).

    Raises:
        ValueError: the checkpoint was written by a run with other arguments (the message names
            the fields that differ).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    with np.load(path) as data:
        saved = str(data["fingerprint"])
        if saved != print_:
            raise ValueError(_mismatch(path, saved, print_))
        count, skipped, draw, batch, seen = (int(v) for v in data["state"])
        k = sum(1 for name in data.files if name.startswith("sum"))
        sums = [np.array(data[f"sum{i}"], np.float64) for i in range(k)] or None
    return Progress(sums, count, skipped, draw, batch, seen)


def _mismatch(path, saved: str, wanted: str) -> str:
    old, new = json.loads(saved), json.loads(wanted)
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    details = "; ".join(f"{k}: saved {old.get(k)!r}, now {new.get(k)!r}" for k in differ[:4])
    return (
        f"`checkpoint` ({path!r}) was written by an ERF run with other arguments ({details}); "
        "resume it with the same network, inputs and options, or give another path (or delete "
        "the file) to start afresh."
    )
