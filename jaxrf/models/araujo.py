"""Araujo et al.'s published receptive fields of TF-Slim networks, shipped with jaxrf.

The table is the one Araujo, Norris and Sim publish with "Computing Receptive Fields of
Convolutional Neural Networks" (Distill 2019, https://distill.pub/2019/computing-receptive-fields/),
as released in the ``receptive_field`` library of google-research (Apache-2.0): one row per
network (``cnn``), input resolution and end point, with the receptive-field size ``rf``, the
effective stride and the effective padding, per axis (the nets are square). ``input_resolution``
is None for the rows computed without a fixed input size. The CSV lies next to this module
(``araujo_receptive_field_table.csv``) and is read with :mod:`importlib.resources`, so it works
from an installed wheel.

Example:
    >>> from jaxrf.models import araujo_row
    >>> row = araujo_row("vgg_16", "vgg_16/pool5")
    >>> row.rf, row.effective_stride, row.effective_padding
    (212, 32, 90)
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from importlib import resources

TABLE_FILE = "araujo_receptive_field_table.csv"


@dataclass(frozen=True)
class AraujoRow:
    """One row of Araujo et al.'s table; ``None`` where the table says ``None``."""

    cnn: str
    input_resolution: int | None
    end_point: str
    gflops: float | None
    rf: int | None
    effective_stride: int | None
    effective_padding: int | None

    @property
    def source(self) -> str:
        """A citation a reader can look up: the paper, then the row."""
        return (
            f"Araujo et al., Distill 2019, receptive-field table: {self.cnn}, "
            f"{self.end_point}, input {self.input_resolution}"
        )


def _optional(text: str, kind):
    return None if text == "None" else kind(text)


@functools.cache
def araujo_table() -> tuple[AraujoRow, ...]:
    """Every row of the shipped table, in file order."""
    text = resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8")
    return tuple(
        AraujoRow(
            cnn=r["cnn"],
            input_resolution=_optional(r["input_resolution"], int),
            end_point=r["end_point"],
            gflops=_optional(r["gflops"], float),
            rf=_optional(r["rf"], int),
            effective_stride=_optional(r["effective_stride"], int),
            effective_padding=_optional(r["effective_padding"], int),
        )
        for r in csv.DictReader(io.StringIO(text))
    )


def araujo_row(cnn: str, end_point: str, input_resolution: int | None = 224) -> AraujoRow:
    """The table's row for one network, end point and input resolution.

    Raises:
        ValueError: no such row (the message lists the end points the table has for ``cnn``).
    """
    for row in araujo_table():
        if (row.cnn, row.end_point, row.input_resolution) == (cnn, end_point, input_resolution):
            return row
    known = sorted({r.end_point for r in araujo_table() if r.cnn == cnn})
    raise ValueError(
        f"Araujo et al.'s table has no row (cnn={cnn!r}, end_point={end_point!r}, "
        f"input_resolution={input_resolution!r}); end points listed for {cnn!r}: "
        f"{', '.join(known) or 'none (unknown cnn)'}."
    )
