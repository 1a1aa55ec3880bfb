"""Shared plumbing of the experiment scripts: paths, provenance, CSV in and out, figures.

Every script writes ``results/<stem>.csv``: a few ``# key: value`` provenance lines (script,
paper figure, jax / flax / numpy versions, device, what the weights and images are), then a
tidy table with a header row. ``read_csv`` gives both back, so a figure can be redrawn from
the CSV alone (``--plot-only``).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def parse_args(doc: str, argv: Sequence[str] | None = None, **extra) -> argparse.Namespace:
    """``--quick`` (tiny settings, for the smoke test), ``--plot-only``, ``--out-dir``."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw the figure from the existing CSV"
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="default: results/")
    for name, kwargs in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    return args


def fmt(values) -> str:
    """Per-axis values as one cell: ``(3, 3)`` -> ``3``, ``(7, 5)`` -> ``7x5``, None -> ``-``."""
    if values is None:
        return "-"
    parts = [str(v) for v in values]
    return parts[0] if len(set(parts)) == 1 else "x".join(parts)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    """Software versions and the device the numbers were computed on."""
    import jax

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    return {
        "jax": _version("jax"),
        "flax": _version("flax"),
        "numpy": _version("numpy"),
        "jaxrf": _version("jaxrf"),
        "device": f"{device.platform} ({kind}), {os.cpu_count()} cores, {platform.machine()}",
    }


def write_csv(
    path: Path,
    rows: Iterable[Mapping[str, object]],
    script: str,
    reproduces: str,
    notes: Sequence[str] = (),
) -> Path:
    """Write provenance comment lines, then the rows (all with the same keys) as CSV."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    meta = {"script": f"experiments/{Path(script).name}", "reproduces": reproduces}
    meta.update(environment())
    for i, note in enumerate(notes):
        meta[f"note{i + 1}"] = note
    buffer = io.StringIO()
    for key, value in meta.items():
        buffer.write(f"# {key}: {value}\n")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path


def read_csv(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Provenance dict and rows (strings) of a CSV written by :func:`write_csv`."""
    meta, lines = {}, []
    for line in Path(path).read_text().splitlines():
        if line.startswith("# "):
            key, _, value = line[2:].partition(": ")
            meta[key] = value
        else:
            lines.append(line)
    return meta, list(csv.DictReader(lines))


def figure(width: float, height: float):
    """A pyplot-free Figure (nothing global is touched)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def footer(fig, meta: Mapping[str, str], extra: str = "") -> None:
    """Small provenance line at the bottom of a figure."""
    text = f"{meta['script']} | jax {meta['jax']}, flax {meta['flax']} | {meta['device']}"
    if extra:
        text = f"{extra}\n{text}"
    fig.supxlabel(text, fontsize=6, color="0.4")
