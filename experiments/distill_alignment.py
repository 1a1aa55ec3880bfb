"""Distill alignment figure: per-position regions of an aligned and a misaligned two-branch net.

Reproduces the idea of Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional
Neural Networks" (Distill 2019), Sec. "Alignment of receptive fields": when the
paths from input to output have the same effective stride and centre offset, the receptive
field of output ``i`` is one interval shifted by the stride; when they do not, the region's
width and centre change from one position to the next. The toys are google-research
/receptive_field's hand test networks 1 (aligned) and 3 (misaligned), as written in
tests/test_layers.py. Purely analytic: no weights, no images.

Writes results/distill_alignment.csv (one row per network x output position x path) and
results/distill_alignment.png.
"""

from __future__ import annotations

import warnings

import _common

import jaxrf
import jaxrf.plot
from jaxrf import Layer, MisalignmentWarning, Parallel

NETWORKS = {
    # name: (layers, input size, expected alignment) -- google-research network 1 and 3.
    "network 1 (aligned)": (
        [
            Parallel(
                [
                    [Layer(1, stride=4, name="L1")],
                    [
                        Layer(1, padding=[(1, 0), (1, 0)], op="pad", name="pad"),
                        Layer(3, stride=2, name="L2"),
                        Layer(1, stride=2, name="L3"),
                    ],
                ]
            )
        ],
        16,
    ),
    "network 3 (misaligned)": (
        [
            Parallel(
                [
                    [
                        Layer(1, padding=[(2, 1), (2, 1)], op="pad", name="pad"),
                        Layer(5, stride=2, name="L1"),
                    ],
                    [Layer(3, name="L2"), Layer(3, name="L3")],
                ]
            )
        ],
        8,
    ),
}
AXIS = 1


def compute() -> tuple[list[dict], dict]:
    rows, fields = [], {}
    for name, (layers, n) in NETWORKS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MisalignmentWarning)
            rf = jaxrf.from_layers(layers, (n, n))
        fields[name] = rf
        base = [m // 2 for m in rf.output_shape]
        for i in range(rf.output_shape[AXIS]):
            base[AXIS] = i
            idx = tuple(base)
            lo, hi = rf.region(idx)[AXIS]
            clo, chi = rf.region(idx, clip=True)[AXIS]
            for path in rf.paths:
                u, v = path.region(idx, rf.input_shape)[AXIS]
                rows.append(
                    {
                        "network": name,
                        "input_size": n,
                        "aligned": rf.aligned,
                        "output_index": i,
                        "path": path.name,
                        "path_stride": str(path.stride[AXIS]),
                        "path_padding": str(path.padding[AXIS]),
                        "path_size": str(path.size[AXIS]),
                        "path_u": str(u),
                        "path_v": str(v),
                        "path_centre": str((u + v) / 2),
                        "region_lo": lo,
                        "region_hi": hi,
                        "clipped_lo": clo,
                        "clipped_hi": chi,
                        "centre": str(rf.center(idx)[AXIS]),
                    }
                )
    return rows, fields


def plot(fields: dict, meta: dict, out):
    fig = _common.figure(12, 4)
    axes = fig.subplots(1, len(fields))
    for ax, (name, rf) in zip(axes, fields.items(), strict=True):
        jaxrf.plot.alignment_regions(ax, rf, axis=AXIS)
        summary = (
            f"size {rf.size[AXIS]}, stride {rf.stride[AXIS]}, padding {rf.padding[AXIS]}"
            if rf.aligned
            else "no single (size, stride, padding)"
        )
        ax.set_title(f"{name}, input {rf.input_shape[AXIS]}\n{summary}", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _common.footer(fig, meta, "analytic (jaxrf.from_layers): no weights, no images")
    fig.savefig(out, dpi=150)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    csv_path = args.out_dir / "distill_alignment.csv"
    rows, fields = compute()
    if not args.plot_only:
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "Araujo et al., Distill 2019, alignment of receptive fields (networks 1 and 3 of "
            "google-research/receptive_field)",
            ["analytic only: no weights, no images"],
        )
    meta, _ = _common.read_csv(csv_path)
    plot(fields, meta, args.out_dir / "distill_alignment.png")
    print(f"wrote {csv_path} and distill_alignment.png")


if __name__ == "__main__":
    main()
