"""Per-layer receptive-field tables: text, Markdown, LaTeX and CSV.

One row per :class:`~jaxrf.LayerRecord` of a :class:`~jaxrf.ReceptiveField`: the layer's
name (the Flax / Haiku module path where the trace has it), its op, output spatial shape,
kernel and stride, and Distill's size ``r``, effective stride ``S`` and effective padding ``P``
of its output with respect to the network input.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from ._diagnostics import resolution_diagnostics
from ._field import LayerRecord, ReceptiveField

COLUMNS = (
    "name",
    "op",
    "output shape",
    "kernel",
    "stride",
    "RF size",
    "effective stride",
    "effective padding",
    "aligned",
)
DIAGNOSTIC_COLUMNS = ("min RF", "max RF", "status")
_FORMATS = ("text", "markdown", "latex", "csv")


def _cell(values) -> str:
    """``(3, 3)`` -> ``3``; ``(7, 5)`` -> ``7x5``; None -> ``-``."""
    if values is None:
        return "-"
    parts = [str(v) for v in values]
    return parts[0] if len(set(parts)) == 1 and len(parts) > 1 else "x".join(parts)


def _row(r: LayerRecord) -> list[str]:
    if r.is_global:
        size = stride = padding = "global"
    else:
        size, stride, padding = (
            _cell(v) for v in (r.size, r.effective_stride, r.effective_padding)
        )
    return [
        r.name,
        r.op,
        "x".join(str(n) for n in r.output_shape),
        _cell(r.kernel),
        _cell(r.stride),
        size,
        stride,
        padding,
        "yes" if r.aligned else "no",
    ]


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("#", r"\#"),
    ):
        text = text.replace(a, b)
    return text


def layer_table(rf: ReceptiveField, fmt: str = "text", diagnostics: bool = False) -> str:
    """The per-layer receptive fields of ``rf`` as a table.

    Args:
        rf: a :class:`~jaxrf.ReceptiveField` (from :func:`jaxrf.receptive_field` or
            :func:`jaxrf.from_layers`).
        fmt: ``"text"`` (aligned columns), ``"markdown"``, ``"latex"`` (a ``tabular``) or
            ``"csv"``.
        diagnostics: add the resolution diagnostics of :func:`jaxrf.resolution_diagnostics`
            at ``rf.input_shape``: columns ``min RF`` and ``max RF`` (smallest and largest size
            over paths) and ``status``: ``border`` (the border layer), ``unproductive`` (its
            input already covers the input), ``covers`` (covers the input, input did not),
            ``global`` or ``-``.

    Returns:
        The table as a string, one row per layer. Per-axis values that agree are shown once
        (``3``), others joined by ``x`` (``7x5``); ``-`` where a value does not apply (merges
        have no kernel; misaligned maps have no single size) and ``global`` where the map reads
        the whole input.

    Raises:
        ValueError: an unknown ``fmt``.

    Example:
        >>> import jaxrf
        >>> layers = [jaxrf.Layer(3, name="c1"), jaxrf.Layer(3, stride=2, name="c2")]
        >>> rf = jaxrf.from_layers(layers, (9, 9))
        >>> print(jaxrf.layer_table(rf, "csv").strip())
        name,op,output shape,kernel,stride,RF size,effective stride,effective padding,aligned
        c1,conv,7x7,3,1,3,1,0,yes
        c2,conv,3x3,3,2,5,2,0,yes
    """
    check_format(fmt)
    rows = [_row(r) for r in rf.layers]
    columns = COLUMNS
    if diagnostics:
        d = resolution_diagnostics(rf)
        columns = COLUMNS + DIAGNOSTIC_COLUMNS
        rows = [
            row + [_cell(d.min_size[k]), _cell(d.max_size[k]), d.status(k)]
            for k, row in enumerate(rows)
        ]
    return render(columns, rows, fmt)


def check_format(fmt: str) -> str:
    """``fmt`` if it is a known table format, else a ValueError naming the choices."""
    if fmt not in _FORMATS:
        raise ValueError(f"`fmt` (={fmt!r}) must be one of {', '.join(map(repr, _FORMATS))}.")
    return fmt


def render(columns: Sequence[str], rows: Sequence[list[str]], fmt: str) -> str:
    """Rows of string cells under ``columns`` as ``text``, ``markdown``, ``latex`` or ``csv``."""
    writer = {"text": _text, "markdown": _markdown, "latex": _latex, "csv": _csv}[check_format(fmt)]
    return writer(list(columns), rows)


def _text(columns: list[str], rows: Sequence[list[str]]) -> str:
    table = [columns, *rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _markdown(columns: list[str], rows: Sequence[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", r"\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _latex(columns: list[str], rows: Sequence[list[str]]) -> str:
    lines = [
        r"\begin{tabular}{ll" + "r" * (len(columns) - 2) + "}",
        r"\hline",
        " & ".join(_latex_escape(c) for c in columns) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(_latex_escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _csv(columns: list[str], rows: Sequence[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()
