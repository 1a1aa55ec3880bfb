"""The fixed-size CNN feature-map visualisation of Dang Ha The Hien's post, Figs. 1-3.

Reproduces Dang Ha The Hien, "A guide to receptive field arithmetic for Convolutional Neural
Networks" (2017, blog post on Medium): a 5x5 input (Fig. 1) and a 7x7 input (Fig. 2) through two
3x3 convolutions with stride 2 and padding 1. Every layer is drawn at the input's size, each
feature at the centre of its receptive field, with the centre feature's receptive field boxed
(it may reach into the padding). The CSV compares jaxrf's per-layer numbers (Distill's closed
forms) with the post's forward recurrence ``(n, jump j, size r, start)`` as printed in its Fig.
3 (start in the post's convention: the first input pixel's centre is at 0.5). Purely analytic:
no weights, no images.

Writes results/feature_map_visualisation.csv and results/feature_map_visualisation.png.
"""

from __future__ import annotations

from fractions import Fraction

import _common
from matplotlib.patches import Rectangle

import jaxrf
import jaxrf.plot
from jaxrf import Layer

LAYERS = [Layer(3, stride=2, padding=1, name="conv1"), Layer(3, stride=2, padding=1, name="conv2")]
INPUT_SIZES = (5, 7)
# The post's Fig. 3 (5x5 input): conv1 n=3, j=2, r=3, start=0.5; conv2 n=2, j=4, r=7,
# start=0.5. For 7x7 the same recurrence by hand: conv1 n=4, j=2, r=3, start=0.5; conv2 n=2,
# j=4, r=7, start=0.5 (n = floor((4 + 2 - 3)/2) + 1 = 2).
SEED_000 = {
    (5, "conv1"): (3, 2, 3, Fraction(1, 2)),
    (5, "conv2"): (2, 4, 7, Fraction(1, 2)),
    (7, "conv1"): (4, 2, 3, Fraction(1, 2)),
    (7, "conv2"): (2, 4, 7, Fraction(1, 2)),
}


def compute() -> tuple[list[dict], dict]:
    rows, fields = [], {}
    for n in INPUT_SIZES:
        rf = jaxrf.from_layers(LAYERS, (n, n))
        fields[n] = rf
        for rec in rf.layers:
            r, S, P = rec.size[0], rec.effective_stride[0], rec.effective_padding[0]
            start = -P + Fraction(r - 1, 2)  # centre of feature 0, 0-indexed pixels
            post = SEED_000[(n, rec.name)]
            rows.append(
                {
                    "input_size": n,
                    "layer": rec.name,
                    "n": rec.output_shape[0],
                    "jump": S,
                    "size": r,
                    "padding": P,
                    "start_0indexed": str(start),
                    "start_post_convention": str(start + Fraction(1, 2)),
                    "post_n": post[0],
                    "post_jump": post[1],
                    "post_size": post[2],
                    "post_start": str(post[3]),
                    "agree": (rec.output_shape[0], S, r, start + Fraction(1, 2)) == post,
                }
            )
    return rows, fields


def plot(fields: dict, meta: dict, out) -> None:
    fig = _common.figure(9, 6.4)
    grid = fig.subplots(len(fields), 3)
    for row, (n, rf) in zip(grid, fields.items(), strict=True):
        ax = row[0]
        jaxrf.plot.fixed_size_feature_map(
            ax,
            jaxrf.from_layers([Layer(1)], (n, n)).layers[0],
            (n, n),
            box_index=(n // 2, n // 2),
            colour="tab:blue",
        )
        ax.set_title(f"input {n}x{n}", fontsize=9)
        colours = ["tab:green", "tab:orange"]
        for ax, rec, colour in zip(row[1:], rf.layers, colours, strict=True):
            centre = tuple(m // 2 for m in rec.output_shape)
            jaxrf.plot.fixed_size_feature_map(ax, rec, (n, n), box_index=centre, colour=colour)
        for ax in row:  # same frame in every panel: the input plus the padding reached
            ax.set_xlim(-4, n + 3)
            ax.set_ylim(n + 3, -4)
            ax.add_patch(Rectangle((-0.5, -0.5), n, n, color="0.94", zorder=0))
            ax.tick_params(labelsize=7)
    _common.footer(fig, meta, "analytic (jaxrf.from_layers): no weights, no images")
    fig.savefig(out, dpi=150)


def main(argv=None) -> None:
    args = _common.parse_args(__doc__, argv)
    csv_path = args.out_dir / "feature_map_visualisation.csv"
    rows, fields = compute()
    if not all(r["agree"] for r in rows):
        raise SystemExit(f"jaxrf disagrees with the post's recurrence: {rows}")
    if not args.plot_only:
        _common.write_csv(
            csv_path,
            rows,
            __file__,
            "Dang Ha The Hien, 'A guide to receptive field arithmetic', Figs. 1-3",
            ["analytic only: no weights, no images"],
        )
    meta, _ = _common.read_csv(csv_path)
    plot(fields, meta, args.out_dir / "feature_map_visualisation.png")
    print(f"wrote {csv_path} and feature_map_visualisation.png")


if __name__ == "__main__":
    main()
