"""The ``jaxrf`` command line: receptive fields of zoo models or your own JAX functions.

Commands:
  analyze TARGET   per-layer theoretical receptive field table (text, markdown, latex, csv)
  erf TARGET       effective receptive field heatmap (PNG) and its statistics
  layers TARGET    per-layer report: theory, structural support and ERF at named layers
  report [MODEL]   theory vs measured, stage by stage, on a bundled photograph (the main job)

TARGET is either
  * a zoo name (``jaxrf.models.names()``, e.g. resnet_v1_50, vgg_16, luo_relu), built with
    random weights (fixed seed), or
  * ``path/to/file.py:NAME`` or ``package.module:NAME`` for your own model. ``NAME`` is either
    the network itself, a function ``x -> y`` on NHWC arrays (then give ``--input-shape``), or
    a factory taking no arguments that returns the network ``x -> y`` or a pair
    ``(network, input_shape)`` with ``input_shape`` the full NHWC shape, e.g.
    ``def make(): return (lambda x: model.apply(params, x)), (1, 224, 224, 3)``.

--input-shape takes the full NHWC shape ``1,224,224,3`` (or ``1x224x224x3``), or just ``H,W``
for a zoo model (batch 1 and the model's channels are kept).

--images takes a folder, a glob or a list of PNG/JPEG files (``jaxrf.load_images``): each image
is resized (shorter side ``--size``), centre-cropped (``--crop``, default the model's input
size) and normalised (``--mean``/``--std``, numbers or ``imagenet``). Without it, the ERF is
averaged over random normal inputs. Every command prints which images it used.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._axis import format_axes
from ._gradient import center_index


@dataclass(frozen=True)
class Target:
    """A network resolved from the command line."""

    name: str
    fn: Callable
    input_shape: tuple[int, ...]
    expected: object | None = None  # jaxrf.models.Expected at the zoo's own input shape
    zoo_input_shape: tuple[int, ...] | None = None
    description: str = ""
    module: object | None = None  # zoo models: the Flax module and its variables
    variables: object | None = None


class CommandLineError(ValueError):
    """A bad argument; printed as ``jaxrf: error: ...`` with exit status 2."""


def parse_shape(text: str | None, argument: str = "--input-shape") -> tuple[int, ...] | None:
    """``"1,224,224,3"`` / ``"1x224x224x3"`` / ``"224,224"`` -> a tuple of positive ints.

    Example:
        >>> parse_shape("1x64x64x3"), parse_shape("32, 32")
        ((1, 64, 64, 3), (32, 32))
    """
    if text is None:
        return None
    parts = [p.strip() for p in re.split(r"[,x]", text)]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise CommandLineError(
            f"{argument} (={text!r}) must be positive ints separated by ',' or 'x', e.g. "
            "1,224,224,3 (NHWC) or 224,224 (H,W for a zoo model)."
        )
    return shape


def _load_object(target: str):
    spec, _, attr = target.rpartition(":")
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec)
        if not path.is_file():
            raise CommandLineError(f"TARGET (={target!r}): file {str(path)!r} does not exist.")
        module_spec = importlib.util.spec_from_file_location(f"_jaxrf_target_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError as error:
            raise CommandLineError(
                f"TARGET (={target!r}): cannot import {spec!r}: {error}"
            ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise CommandLineError(
            f"TARGET (={target!r}): {spec!r} has no attribute {attr!r}."
        ) from None


def _takes_no_arguments(obj) -> bool:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def load_target(target: str, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> Target:
    """Resolve TARGET (a zoo name or ``file.py:NAME`` / ``module:NAME``) to a network.

    Raises:
        CommandLineError: unknown zoo name, missing file / attribute, no input shape.
    """
    import jaxrf.models

    if ":" not in target:
        if target not in jaxrf.models.names():
            raise CommandLineError(
                f"TARGET (={target!r}) is neither a zoo name nor 'file.py:NAME' / "
                f"'module:NAME'; zoo names: {', '.join(jaxrf.models.names())}."
            )
        return _zoo_target(target, input_shape, seed)
    return _user_target(target, input_shape)


def _zoo_target(target: str, input_shape, seed: int) -> Target:
    import jax

    import jaxrf.models

    entry = jaxrf.models.get(target)
    shape = tuple(entry.input_shape)
    if input_shape is not None:
        if len(input_shape) == 2:
            shape = (shape[0], *input_shape, shape[-1])
        elif len(input_shape) == len(shape):
            shape = tuple(input_shape)
        else:
            raise CommandLineError(
                f"--input-shape (={input_shape}) must be H,W or the full NHWC shape for "
                f"zoo model {target!r} (default {entry.input_shape})."
            )
    variables = entry.init(jax.random.key(seed))
    module = entry.model()
    rngs = {"dropout": jax.random.key(1)}
    return Target(
        target,
        lambda x: module.apply(variables, x, rngs=rngs),
        shape,
        entry.expected,
        tuple(entry.input_shape),
        entry.description,
        module,
        variables,
    )


def _user_target(target: str, input_shape) -> Target:
    obj = _load_object(target)
    if not callable(obj):
        raise CommandLineError(f"TARGET (={target!r}) is a {type(obj).__name__}, not callable.")
    fn, shape = obj, None
    if _takes_no_arguments(obj):  # a factory
        made = obj()
        if isinstance(made, tuple) and len(made) == 2 and callable(made[0]):
            fn, shape = made[0], tuple(int(n) for n in made[1])
        elif callable(made):
            fn = made
        else:
            raise CommandLineError(
                f"TARGET (={target!r}) is a factory that returned a {type(made).__name__}; it "
                "must return the network x -> y or a pair (network, input_shape)."
            )
    if input_shape is not None:
        shape = tuple(input_shape)
    if shape is None:
        raise CommandLineError(
            f"TARGET (={target!r}) needs --input-shape (the full NHWC shape, e.g. 1,224,224,3), "
            "or make it a factory returning (network, input_shape)."
        )
    return Target(target, fn, shape)


# ---------------------------------------------------------------------------------------
# Inputs: images (--images) or random normal samples.
# ---------------------------------------------------------------------------------------

#: ``--mean imagenet`` / ``--std imagenet``: torchvision's ImageNet statistics (pixels in [0, 1]).
IMAGENET = {"--mean": (0.485, 0.456, 0.406), "--std": (0.229, 0.224, 0.225)}


def parse_numbers(text: str | None, argument: str) -> tuple[float, ...] | None:
    """``"0.5"`` / ``"0.485,0.456,0.406"`` / ``"imagenet"`` -> a tuple of floats.

    Example:
        >>> parse_numbers("0.5,0.25", "--std"), parse_numbers("imagenet", "--mean")
        ((0.5, 0.25), (0.485, 0.456, 0.406))
    """
    if text is None:
        return None
    if text.strip().lower() == "imagenet":
        return IMAGENET[argument]
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CommandLineError(
            f"{argument} (={text!r}) must be numbers separated by ',' (one, or one per "
            "channel), or 'imagenet'."
        ) from None


class _Images:
    """A ``jaxrf.ImageStream`` whose bad-file ValueErrors become command-line errors."""

    def __init__(self, stream):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        try:
            yield from self.stream
        except ValueError as error:
            raise CommandLineError(f"--images: {error}") from None

    def array(self):
        """All images at once, ``(N, H, W, C)``."""
        import numpy as np

        return np.concatenate(list(self))


def image_stream(args: argparse.Namespace, shape: tuple[int, ...], convert: bool = False):
    """The ``--images`` stream for a network taking NHWC ``shape``: ``(stream, input shape)``.

    The crop is ``--crop`` (H,W or one int), else ``--size`` square, else the network's own
    H and W; the shorter side is resized to ``--size``, else to the crop's larger side.
    """
    import jaxrf

    crop = parse_shape(args.crop, "--crop")
    if crop is not None and len(crop) == 1:
        crop = crop * 2
    if crop is not None and len(crop) != 2:
        raise CommandLineError(f"--crop (={args.crop!r}) must be H,W or one int.")
    if crop is None:
        crop = (args.size, args.size) if args.size else tuple(shape[1:3])
    try:
        stream = jaxrf.load_images(
            args.images,
            size=args.size or max(crop),
            crop=crop,
            mean=parse_numbers(args.mean, "--mean"),
            std=parse_numbers(args.std, "--std"),
            batch_size=args.batch_size or 8,
            channels=shape[-1],
            convert=convert or args.convert,
        )
    except ValueError as error:
        raise CommandLineError(f"--images: {error}") from None
    return stream, (1, *crop, shape[-1])


def _inputs(shape, samples: int, seed: int):
    import jax

    return jax.random.normal(jax.random.key(seed + 1), (samples, *shape[1:]))


def erf_inputs(args: argparse.Namespace, target: Target):
    """``(inputs, input shape, words saying what they are)`` for the ERF commands."""
    if args.images:
        stream, shape = image_stream(args, target.input_shape)
        return _Images(stream), shape, "images: " + stream.describe()
    what = f"images: none; {args.samples} random normal inputs (seed {args.seed})"
    return _inputs(target.input_shape, args.samples, args.seed), target.input_shape, what


# ---------------------------------------------------------------------------------------
# Theory of a named layer.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTheory:
    """Distill's ``r``, ``S``, ``P`` of one named layer, with the regions of its units.

    ``region(i)`` is ``[S i - P, S i - P + r - 1]`` per axis; ``clip=True`` cuts it to the
    image ``[0, n - 1]`` (exact when every pixel of the interval is read, as in networks
    without dilation gaps or cropping).
    """

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    def region(self, index, clip: bool = False):
        box = []
        for i, r, s, p, n in zip(
            index, self.size, self.stride, self.padding, self.input_shape, strict=True
        ):
            lo, hi = s * i - p, s * i - p + r - 1
            if clip:
                lo, hi = max(lo, 0), min(hi, n - 1)
                if lo > hi:
                    return None
            box.append((int(lo), int(hi)))
        return tuple(box)

    def center(self, index):
        from fractions import Fraction

        return tuple(
            Fraction(s * i - p) + Fraction(r - 1, 2)
            for i, r, s, p in zip(index, self.size, self.stride, self.padding, strict=True)
        )


def layer_theory(rf, name: str) -> LayerTheory:
    """The theory of layer ``name`` (a name from ``rf.layers``; the last record so named).

    Raises:
        CommandLineError: no such layer, or its receptive field is misaligned or global.
    """
    records = [r for r in rf.layers if r.name == name]
    if not records:
        known = list(dict.fromkeys(r.name for r in rf.layers))
        raise CommandLineError(
            f"--layer (={name!r}) is not a layer of this network; names (as in `jaxrf analyze`): "
            f"{', '.join(known[:12])}{', ...' if len(known) > 12 else ''}."
        )
    record = records[-1]
    if record.size is None:
        raise CommandLineError(
            f"--layer (={name!r}) has no single receptive field (misaligned paths or a global "
            "operation); choose a layer before the merge."
        )
    return LayerTheory(
        name,
        tuple(rf.input_shape),
        tuple(record.output_shape),
        *(tuple(int(v) for v in t) for t in (record.size, record.effective_stride)),
        tuple(int(v) for v in record.effective_padding),
    )


def _layer_keyword(layer) -> dict:
    """``layer=`` for the probes, where this jaxrf has layer taps (else a clear error)."""
    if layer is None:
        return {}
    import inspect

    import jaxrf

    if "layer" not in inspect.signature(jaxrf.effective_receptive_field).parameters:
        raise CommandLineError(
            "--layer needs effective_receptive_field(..., layer=NAME), which this jaxrf lacks."
        )
    return {"layer": layer}


# ---------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------


def _spec(shape):
    import jax
    import jax.numpy as jnp

    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _analyze(args: argparse.Namespace) -> int:
    import jaxrf

    target = load_target(args.target, parse_shape(args.input_shape), args.seed)
    rf = jaxrf.receptive_field(target.fn, _spec(target.input_shape))
    if args.format == "text":
        print(f"{target.name} at input {_shape(target.input_shape)}: theoretical receptive field")
        print("images: none (the theory needs only the input shape)")
    print(jaxrf.layer_table(rf, args.format), end="")
    if args.format == "text":
        print(rf.describe())
    return 0


def _shape(shape) -> str:
    return "x".join(str(n) for n in shape)


def _box(box) -> str:
    if box is None:
        return "(empty)"
    return " x ".join(f"[{lo}, {hi}]" for lo, hi in box)


def erf_statistics(erf, rf, index) -> list[tuple[str, str]]:
    """Named ERF statistics of output ``index`` (``rf``: a ReceptiveField or LayerTheory)."""
    luo = erf.luo_size()
    area = erf.area_ratio()
    centre = tuple(float(c) for c in rf.center(index))
    rows = [
        ("ERF std (px, per axis)", ", ".join(f"{s:.2f}" for s in erf.std())),
        (
            "ERF Luo size (sqrt #px > 4.55% of centre)",
            "-" if luo.size is None else f"{luo.size:.2f} ({luo.count} px)",
        ),
        (
            "ERF centroid - analytic centre (px)",
            ", ".join(f"{d:+.2f}" for d in erf.centroid_offset(centre)),
        ),
        (
            "ERF area ratio at 20/30/50/99 % (RepLKNet)",
            " / ".join("-" if r is None else f"{100 * r:.1f}%" for r in area.ratios),
        ),
    ]
    clipped = rf.region(index, clip=True)
    if clipped is not None:
        rows.append(
            (
                "ERF mass inside the clipped theoretical region",
                f"{100 * erf.share_inside(clipped):.1f}%",
            )
        )
    return rows


def save_heatmap(erf, rf, index, title: str, out: Path, log: bool, growth: bool = False) -> Path:
    """The ERF heatmap with the theoretical regions drawn (and the RF growth with ``growth``)."""
    from matplotlib.figure import Figure

    from . import plot

    fig = Figure(figsize=(10 if growth else 5.5, 4.6), layout="constrained")
    axes = fig.subplots(1, 2 if growth else 1)
    ax = axes[0] if growth else axes
    plot.erf_heatmap(ax, erf.map, rf=rf, index=index, log=log, title=title)
    if growth:
        plot.rf_growth(axes[1], rf, log=True)
        axes[1].set_title("theoretical RF size per layer")
        if len(rf.layers) > 30:
            axes[1].set_xlabel(f"layer (of {len(rf.layers)} traced records)")
    fig.savefig(out, dpi=120)
    return out


def _erf(args: argparse.Namespace) -> int:
    import jaxrf

    target = load_target(args.target, parse_shape(args.input_shape), args.seed)
    inputs, shape, used = erf_inputs(args, target)
    rf = jaxrf.receptive_field(target.fn, _spec(shape))
    theory = rf if args.layer is None else layer_theory(rf, args.layer)
    index = (
        center_index(theory.output_shape)
        if args.index is None
        else parse_shape(args.index, "--index")
    )
    erf = jaxrf.effective_receptive_field(
        target.fn,
        inputs,
        index,
        batch_size=args.batch_size,
        reduce=args.reduce,
        progress=True,
        **_layer_keyword(args.layer),
    )
    where = "" if args.layer is None else f", layer {args.layer}"
    print(
        f"{target.name} at input {_shape(shape)}{where}, output index {index}: "
        f"ERF over {erf.count} inputs, random weights (seed {args.seed})\n{used}"
    )
    print(
        f"  theory: size {format_axes(theory.size)}, stride {format_axes(theory.stride)}, "
        f"padding {format_axes(theory.padding)}, region {_box(theory.region(index))}, "
        f"clipped {_box(theory.region(index, clip=True))}"
    )
    for name, value in erf_statistics(erf, theory, index):
        print(f"  {name}: {value}")
    if erf.map.ndim == 2:
        title = f"{target.name}{where}: ERF at output {index}"
        print(f"wrote {save_heatmap(erf, theory, index, title, args.out, args.log)}")
    return 0


def _layers(args: argparse.Namespace) -> int:
    """``jaxrf layers``: ``jaxrf.layer_report`` (theory, structural box, ERF per layer)."""
    import jaxrf

    if not hasattr(jaxrf, "layer_report"):
        raise CommandLineError("`jaxrf layers` needs jaxrf.layer_report, which this jaxrf lacks.")
    target = load_target(args.target, parse_shape(args.input_shape), args.seed)
    inputs, shape, used = erf_inputs(args, target)
    index = None if args.index is None else parse_shape(args.index, "--index")
    try:
        report = jaxrf.layer_report(
            target.fn, inputs, layers=args.layer, index=index, batch_size=args.batch_size
        )
    except ValueError as error:  # an unknown layer or a bad index, named in the message
        raise CommandLineError(f"layer report: {error}") from None
    if args.format == "text":
        print(f"{target.name} at input {_shape(shape)}, random weights (seed {args.seed})")
        print(used)
    else:  # keep stdout a clean table; say which images on stderr
        print(used, file=sys.stderr)
    table = report.table(args.format)
    print(table, end="" if table.endswith("\n") else "\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ._cli_report import run_report

    return run_report(args)


# ---------------------------------------------------------------------------------------
# The parser.
# ---------------------------------------------------------------------------------------


def _add_image_options(parser: argparse.ArgumentParser, samples: int | None = 8) -> None:
    default = "random normal samples" if samples is not None else "grace_hopper.jpg"
    group = parser.add_argument_group(f"inputs (default: {default})")
    group.add_argument("--images", nargs="+", metavar="PATH", help="folder, glob or PNG/JPEG files")
    group.add_argument("--size", type=int, help="resize the shorter side to SIZE")
    group.add_argument("--crop", help="centre crop H,W or one int (default: the input size)")
    group.add_argument("--mean", help="per-channel mean on [0, 1] pixels, or 'imagenet'")
    group.add_argument("--std", help="per-channel std, or 'imagenet'")
    group.add_argument("--convert", action="store_true", help="convert grey/RGBA files")
    if samples is not None:
        group.add_argument(
            "--samples", type=int, default=samples, help=f"random normal inputs ({samples})"
        )
    group.add_argument("--batch-size", type=int, default=None, help="samples per step")


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="zoo name, file.py:NAME or module:NAME")
    parser.add_argument("--input-shape", help="NHWC, e.g. 1,224,224,3 (zoo: default or H,W)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")


def _add_erf_command(sub) -> None:
    erf = sub.add_parser("erf", help="effective receptive field heatmap and statistics")
    _add_target(erf)
    erf.add_argument("--index", help="output position, e.g. 16,16 (default: the centre)")
    erf.add_argument("--layer", help="probe a unit of this layer (a name from `analyze`)")
    erf.add_argument("--reduce", choices=("abs", "signed", "positive", "squared"), default="abs")
    erf.add_argument("--log", action="store_true", help="logarithmic colour scale")
    erf.add_argument("--out", type=Path, default=Path("erf.png"), help="PNG path (default erf.png)")
    _add_image_options(erf)
    erf.set_defaults(func=_erf)


def _add_layers_command(sub) -> None:
    layers = sub.add_parser("layers", help="per-layer theory, structural support and ERF")
    _add_target(layers)
    layers.add_argument(
        "--layer", action="append", help="a layer to report (repeat; default: every layer)"
    )
    layers.add_argument("--index", help="output position (default: the centre)")
    layers.add_argument("--format", choices=("text", "markdown", "latex", "csv"), default="text")
    _add_image_options(layers)
    layers.set_defaults(func=_layers)


def _add_report_command(sub) -> None:
    from ._cli_report import REPORT_MODEL, REPORT_SIZE, add_report_arguments

    report = sub.add_parser(
        "report",
        help="theory vs measured, stage by stage, on a bundled photograph",
        description=f"Theory vs measured on a zoo model (default {REPORT_MODEL} at "
        f"{REPORT_SIZE}x{REPORT_SIZE}, random weights, on matplotlib's bundled photograph "
        "grace_hopper.jpg): per stage, the analytic size/stride/padding against the published "
        "numbers, the clipped analytic region of a unit against the structural support "
        "measured by back-propagation, and ERF statistics. Writes jaxrf_report_MODEL.png. "
        "Exit status 1 if theory and measurement disagree.",
    )
    add_report_arguments(report)
    _add_image_options(report, samples=None)
    report.set_defaults(func=_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxrf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    analyze = sub.add_parser("analyze", help="per-layer theoretical receptive field table")
    _add_target(analyze)
    analyze.add_argument("--format", choices=("text", "markdown", "latex", "csv"), default="text")
    analyze.set_defaults(func=_analyze)
    _add_erf_command(sub)
    _add_layers_command(sub)
    _add_report_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandLineError as error:
        parser.exit(2, f"jaxrf: error: {error}\n")


if __name__ == "__main__":  # run the imported module, whose error class the helpers raise
    from jaxrf.cli import main as _main

    sys.exit(_main())
