"""``jaxrf report``: theory next to measurement, stage by stage, on a real photograph.

For each stage output of a zoo network (default: TF-Slim ResNet-50 v1 at 224x224, blocks 1-3)
the report prints

* the traced size / stride / padding against the published row of Araujo et al.'s table
  (Distill 2019, "Computing Receptive Fields of Convolutional Neural Networks") at that input
  size, where the table has one;
* the clipped theoretical region of one unit against the structural support box measured by
  back-propagation (they must be equal). The unit is the stage's centre unit, or its corner
  unit ``(0, 0)`` where the centre unit's region already covers the whole image, so that every
  measured box is smaller than the image;
* the effective receptive field of that unit (Luo et al., NeurIPS 2016) on the images: its std,
  Luo size, the share of its mass inside the theoretical box and its size relative to the RF.

Stages are probed by tapping the Flax module's output (``capture_intermediates``): the stage's
network is the zoo network truncated at that module.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ._axis import format_axes
from ._gradient import center_index

REPORT_MODEL = "resnet_v1_50"
REPORT_SIZE = 224

#: Flax module paths of the stage outputs the report measures, per zoo model.
STAGES = {
    "resnet_v1_50": ("block1_unit3", "block2_unit4", "block3_unit6"),
    "resnet_v1_101": ("block1_unit3", "block2_unit4", "block3_unit23"),
    "resnet50_torchvision": ("layer1_2", "layer2_3", "layer3_5"),
}

#: The end point of Araujo et al.'s table (Distill 2019) that each stage output is.
END_POINTS = {
    ("resnet_v1_50", "block1_unit3"): "resnet_v1_50/block1",
    ("resnet_v1_50", "block2_unit4"): "resnet_v1_50/block2",
    ("resnet_v1_50", "block3_unit6"): "resnet_v1_50/block3",
    ("resnet_v1_101", "block1_unit3"): "resnet_v1_101/block1",
    ("resnet_v1_101", "block2_unit4"): "resnet_v1_101/block2",
    ("resnet_v1_101", "block3_unit23"): "resnet_v1_101/block3",
}


def published(model: str, stage: str | None, input_size: int) -> tuple | None:
    """Araujo et al.'s ``(rf, stride, padding, source)`` for a stage at a square input, or None."""
    end_point = END_POINTS.get((model, stage))
    if end_point is None:
        return None
    from .models import araujo_row  # the table shipped inside jaxrf

    try:
        row = araujo_row(model, end_point, input_size)
    except ValueError:  # no row at this input size
        return None
    return row.rf, row.effective_stride, row.effective_padding, row.source


def photograph() -> str:
    """Path of matplotlib's bundled photograph ``grace_hopper.jpg`` (600 x 512 RGB)."""
    import matplotlib.cbook

    return str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The report's own options (the image options are added by the CLI)."""
    parser.add_argument("model", nargs="?", default=REPORT_MODEL, help=f"zoo name ({REPORT_MODEL})")
    parser.add_argument(
        "--input-size", type=int, default=None, help="H = W of the input (default: the model's)"
    )
    parser.add_argument(
        "--stage",
        action="append",
        help="Flax module path of a stage output to measure (repeat; default: the model's "
        f"stages, e.g. {', '.join(STAGES[REPORT_MODEL])}; whole network if it has none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed")
    parser.add_argument("--out-dir", default=".", help="where the PNG goes (default: here)")


@dataclass(frozen=True)
class Stage:
    """What the report measured at one stage: theory, unit, structural box and ERF."""

    name: str | None  # None: the whole network
    rf: object
    index: tuple[int, ...]
    unit: str  # "centre" or "corner"
    clipped: tuple | None
    box: tuple | None
    erf: object
    published: tuple | None


def tap(target, stage: str | None):
    """The zoo network truncated at Flax module path ``stage`` (``"a/b"``); None: whole net.

    Raises:
        CommandLineError: ``stage`` is not the path of a module with parameters.
    """
    from .cli import CommandLineError

    if stage is None:
        return target.fn
    path = tuple(stage.split("/"))
    module, variables = target.module, target.variables
    node = variables.get("params", {}) if variables is not None else {}
    for depth, key in enumerate(path):
        if key not in node:
            where = "/".join(path[:depth]) or "the top"
            raise CommandLineError(
                f"--stage (={stage!r}) is not a module path of {target.name}; below {where} "
                f"its modules are {', '.join(k for k in node if isinstance(node[k], dict))}."
            )
        node = node[key]

    def fn(x):
        _, state = module.apply(
            variables,
            x,
            capture_intermediates=lambda m, _: m.path == path,
            mutable=["intermediates"],
        )
        node = state["intermediates"]
        for key in path:
            node = node[key]
        return node["__call__"][0]

    return fn


def choose_unit(rf) -> tuple[tuple[int, ...], str]:
    """The centre unit, or the corner unit where the centre one's clipped region is the image."""
    centre = center_index(rf.output_shape)
    whole = tuple((0, n - 1) for n in rf.input_shape)
    if rf.region(centre, clip=True) != whole:
        return centre, "centre"
    return (0,) * len(centre), "corner"


def measure(target, stage: str | None, fn, images, shape, steps) -> Stage:
    """Theory, structural support and ERF of one stage's unit (``fn``: the network cut at the
    stage; ``steps``: a tqdm bar)."""
    import jax.numpy as jnp

    import jaxrf

    from .cli import _spec

    label = stage or target.name
    steps.set_postfix_str(f"{label}: theory")
    rf = jaxrf.receptive_field(fn, _spec(shape))
    index, unit = choose_unit(rf)
    steps.set_postfix_str(f"{label}: structural support")
    box = jaxrf.actual_receptive_field(fn, jnp.zeros(shape), index, mode="structural").box
    steps.set_postfix_str(f"{label}: ERF")
    erf = jaxrf.effective_receptive_field(fn, images, index, progress=False)
    steps.update()
    square = shape[1] if shape[1] == shape[2] else None
    row = published(target.name, stage, square)
    return Stage(stage, rf, index, unit, rf.region(index, clip=True), box, erf, row)


def _reference_row(target):
    """Whole-network theory at the zoo's reference input against the zoo's expected numbers."""
    import jaxrf

    from .cli import _shape, _spec

    if target.expected is None or target.zoo_input_shape is None:
        return None
    ref = jaxrf.receptive_field(target.fn, _spec(target.zoo_input_shape))
    exp = target.expected
    got = (ref.size, ref.stride, ref.padding)
    want = (exp.size, exp.stride, exp.padding)
    return (
        f"whole network: size / stride / padding at {_shape(target.zoo_input_shape)}",
        " / ".join(format_axes(v) for v in got),
        " / ".join(format_axes(v) for v in want) + f" ({exp.source})",
        "match" if got == want else "MISMATCH",
    )


def _stage_rows(s: Stage, shape) -> list[tuple[str, str, str, str]]:
    from .cli import _box, _shape

    label = s.name or f"whole network at {_shape(shape)}"
    theory = f"{format_axes(s.rf.size)} / {format_axes(s.rf.stride)} / {format_axes(s.rf.padding)}"
    rows = []
    if s.published is None:
        rows.append((f"{label}: size / stride / padding", theory, "", ""))
    else:
        size, stride, padding, source = s.published
        want = f"{size} / {stride} / {padding} ({source})"
        got = (s.rf.size, s.rf.stride, s.rf.padding)
        ok = got == ((size,) * 2, (stride,) * 2, (padding,) * 2)
        rows.append((f"{label}: size / stride / padding", theory, want, _verdict(ok)))
    rows.append(
        (
            f"{label}: {s.unit} unit {s.index}, clipped region vs structural support",
            _box(s.clipped),
            _box(s.box),
            _verdict(s.clipped == s.box),
        )
    )
    return rows


def _verdict(ok: bool) -> str:
    return "match" if ok else "MISMATCH"


def _print_table(rows) -> bool:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'quantity'.ljust(width)}  theory (jaxrf.receptive_field)  measured / published")
    for name, theory, measured, verdict in rows:
        tail = f"  {measured}" if measured else ""
        print(f"{name.ljust(width)}  {theory}{tail}{'  -> ' + verdict if verdict else ''}")
    return all(r[3] != "MISMATCH" for r in rows)


def _print_erf(stages: list[Stage], count: int) -> None:
    print(
        f"\neffective receptive field of each unit (mean |input gradient| over {count} "
        "image(s); random weights, so not a trained network's ERF):"
    )
    head = ("stage", "unit", "RF", "clipped box (% of image)", "ERF std", "Luo size")
    head += ("Luo / RF", "mass in box")
    rows = [head]
    for s in stages:
        hw = [hi - lo + 1 for lo, hi in s.clipped]
        share = 100 * hw[0] * hw[1] / (s.rf.input_shape[0] * s.rf.input_shape[1])
        luo = s.erf.luo_size().size
        rows.append(
            (
                s.name or "(whole)",
                f"{s.unit} {s.index}",
                format_axes(s.rf.size),
                f"{hw[0]}x{hw[1]} ({share:.1f}%)",
                ", ".join(f"{v:.1f}" for v in s.erf.std()),
                "-" if luo is None else f"{luo:.1f}",
                "-" if luo is None else f"{luo / max(s.rf.size):.2f}",
                f"{100 * s.erf.share_inside(s.clipped):.1f}%",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def save_figure(stages: list[Stage], picture, title: str, out: Path) -> Path:
    """The first image with every stage's clipped box, then each stage's ERF (log scale)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from . import plot

    fig = Figure(figsize=(4.2 * (1 + len(stages)), 4.4), layout="constrained")
    axes = fig.subplots(1, 1 + len(stages), squeeze=False)[0]
    axes[0].imshow(picture, cmap="gray" if picture.shape[-1] == 1 else None)
    colours = ["tab:red", "tab:orange", "tab:cyan", "tab:green", "tab:purple"]
    for s, colour in zip(stages, colours * len(stages), strict=False):
        (r0, r1), (c0, c1) = s.clipped
        axes[0].add_patch(
            Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, color=colour)
        )
        axes[0].plot([], [], color=colour, label=f"{s.name or 'network'} {s.unit} unit")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[0].set_title("input and theoretical boxes (clipped)", fontsize=9)
    for ax, s in zip(axes[1:], stages, strict=True):
        plot.erf_heatmap(ax, s.erf.map, rf=s.rf, index=s.index, log=True)
        ax.set_title(f"{s.name or 'network'}: RF {max(s.rf.size)}, ERF (log)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110)
    return out


def _load(args: argparse.Namespace):
    """The target at the report's input and the images: ``(target, stream, shape)``."""
    from .cli import image_stream, load_target

    size = args.input_size
    target = load_target(args.model, None if size is None else (size, size), args.seed)
    if args.images is None:
        args.images = [photograph()]
    if args.mean is None and args.std is None and target.input_shape[-1] == 3:
        args.mean = args.std = "imagenet"
    stream, shape = image_stream(args, target.input_shape, convert=True)
    return target, stream, shape


def run_report(args: argparse.Namespace) -> int:
    """Run the report (see the module docstring); 0 when theory and measurement agree."""
    from tqdm.auto import tqdm

    from .cli import _Images, _shape

    started = time.perf_counter()
    target, stream, shape = _load(args)
    print(
        f"jaxrf report: {target.name} ({target.description}), random weights (seed {args.seed}), "
        f"input {_shape(shape)}\nimages: {stream.describe()}"
    )
    images = _Images(stream).array()
    names = args.stage or STAGES.get(target.name, (None,))
    fns = [tap(target, name) for name in names]  # checks every --stage before the work starts
    with tqdm(total=len(names), desc="report", unit="stage", file=sys.stderr) as steps:
        stages = [
            measure(target, n, f, images, shape, steps) for n, f in zip(names, fns, strict=True)
        ]
    reference = _reference_row(target)
    rows = ([reference] if reference else []) + [r for s in stages for r in _stage_rows(s, shape)]
    ok = _print_table(rows)
    _print_erf(stages, len(images))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if len(shape) == 4:
        picture = images[0] * stream.std + stream.mean
        title = f"{target.name} at {_shape(shape[1:3])}, random weights: theory vs ERF"
        png = save_figure(
            stages, picture.clip(0, 1), title, out_dir / f"jaxrf_report_{target.name}.png"
        )
        print(f"wrote {png}")
    verdict = "all checks passed" if ok else "THEORY AND MEASUREMENT DISAGREE"
    print(f"{verdict} ({time.perf_counter() - started:.1f} s)")
    return 0 if ok else 1
