"""The ``jaxrf`` command line.

``jaxrf report`` is the README's main job: the receptive field of a built-in network, layer by
layer, as a table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._layers import Layer, from_layers

# TF-Slim alexnet_v2 (Araujo et al. publish pool5: 195 / 32 / 64 at input 224).
_ALEXNET_V2 = [
    Layer(11, stride=4, padding="VALID", name="conv1"),
    Layer(3, stride=2, name="pool1", op="max_pool"),
    Layer(5, padding="SAME", name="conv2"),
    Layer(3, stride=2, name="pool2", op="max_pool"),
    Layer(3, padding="SAME", name="conv3"),
    Layer(3, padding="SAME", name="conv4"),
    Layer(3, padding="SAME", name="conv5"),
    Layer(3, stride=2, name="pool5", op="max_pool"),
]


def _fmt(values) -> str:
    if values is None:
        return "-"
    parts = [str(v) for v in values]
    return parts[0] if len(set(parts)) == 1 else "x".join(parts)


def _report(args: argparse.Namespace) -> int:
    rf = from_layers(_ALEXNET_V2, (args.size, args.size))
    header = ("layer", "op", "output", "kernel", "stride", "RF size", "eff. stride", "eff. pad")
    rows = [
        (r.name, r.op, "x".join(map(str, r.output_shape)), _fmt(r.kernel), _fmt(r.stride),
         _fmt(r.size), _fmt(r.effective_stride), _fmt(r.effective_padding))
        for r in rf.layers
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    print(f"alexnet_v2 (TF-Slim layout) at input {args.size}x{args.size}: analytic receptive field")
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(rf.describe())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxrf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="receptive field of a built-in network")
    report.add_argument("--size", type=int, default=224, help="input height and width")
    report.set_defaults(func=_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
