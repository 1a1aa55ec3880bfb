"""The ``jaxrf`` command line: receptive fields of zoo models or your own JAX functions.

Commands:
  analyze TARGET   per-layer theoretical receptive field table (text, markdown, latex, csv)
  erf TARGET       effective receptive field heatmap (PNG) and its statistics
  report [MODEL]   theory vs measured on a zoo model (the README's main job)

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
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: The report's default: a zoo ResNet small enough to run in seconds on 2 CPU cores.
REPORT_MODEL = "resnet_v1_50"
REPORT_SIZE = 64


@dataclass(frozen=True)
class Target:
    """A network resolved from the command line."""

    name: str
    fn: Callable
    input_shape: tuple[int, ...]
    expected: object | None = None  # jaxrf.models.Expected at the zoo's own input shape
    zoo_input_shape: tuple[int, ...] | None = None
    description: str = ""


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
    import jax

    import jaxrf.models

    if ":" not in target:
        if target not in jaxrf.models.names():
            raise CommandLineError(
                f"TARGET (={target!r}) is neither a zoo name nor 'file.py:NAME' / "
                f"'module:NAME'; zoo names: {', '.join(jaxrf.models.names())}."
            )
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
        return Target(
            target,
            entry.build(jax.random.key(seed)),
            shape,
            entry.expected,
            tuple(entry.input_shape),
            entry.description,
        )
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
    print(jaxrf.layer_table(rf, args.format), end="")
    if args.format == "text":
        print(rf.describe())
    return 0


def _shape(shape) -> str:
    return "x".join(str(n) for n in shape)


def _fmt(values) -> str:
    if values is None:
        return "-"
    parts = [str(v) for v in values]
    return parts[0] if len(set(parts)) == 1 else "x".join(parts)


def _box(box) -> str:
    if box is None:
        return "(empty)"
    return " x ".join(f"[{lo}, {hi}]" for lo, hi in box)


def _inputs(shape, samples: int, seed: int):
    import jax

    return jax.random.normal(jax.random.key(seed + 1), (samples, *shape[1:]))


def _erf_statistics(erf, rf, index) -> list[tuple[str, str]]:
    luo = erf.luo_size()
    area = erf.area_ratio()
    rows = [
        ("ERF std (px, per axis)", ", ".join(f"{s:.2f}" for s in erf.std())),
        (
            "ERF Luo size (sqrt #px > 4.55% of centre)",
            "-" if luo.size is None else f"{luo.size:.2f} ({luo.count} px)",
        ),
        (
            "ERF centroid - analytic centre (px)",
            ", ".join(
                f"{d:+.2f}" for d in erf.centroid_offset(tuple(float(c) for c in rf.center(index)))
            ),
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


def _save_heatmap(erf, rf, index, title: str, out: Path, log: bool, growth: bool = False) -> Path:
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
    rf = jaxrf.receptive_field(target.fn, _spec(target.input_shape))
    index = (
        tuple(rf.output_shape[a] // 2 for a in range(rf.ndim))
        if args.index is None
        else parse_shape(args.index, "--index")
    )
    erf = jaxrf.effective_receptive_field(
        target.fn,
        _inputs(target.input_shape, args.samples, args.seed),
        index,
        batch_size=args.batch_size,
        reduce=args.reduce,
        progress=True,
    )
    print(
        f"{target.name} at input {_shape(target.input_shape)}, output index {index}: "
        f"ERF over {erf.count} random normal inputs (seed {args.seed}), random weights"
    )
    print(
        f"  theory: size {_fmt(rf.size)}, stride {_fmt(rf.stride)}, padding {_fmt(rf.padding)}, "
        f"region {_box(rf.region(index))}, clipped {_box(rf.region(index, clip=True))}"
    )
    for name, value in _erf_statistics(erf, rf, index):
        print(f"  {name}: {value}")
    if erf.map.ndim == 2:
        out = _save_heatmap(
            erf, rf, index, f"{target.name}: ERF at output {index}", args.out, args.log
        )
        print(f"wrote {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    import jaxrf

    started = time.perf_counter()
    size = args.input_size
    target = load_target(args.model, None if size is None else (size, size), args.seed)
    if args.model == REPORT_MODEL and size is None:
        target = load_target(args.model, (REPORT_SIZE, REPORT_SIZE), args.seed)
    shape = target.input_shape
    print(
        f"jaxrf report: {target.name} ({target.description}), random weights (seed {args.seed}), "
        f"input {_shape(shape)}, {args.samples} random normal inputs"
    )
    steps = tqdm(total=4, desc="report", unit="step", file=sys.stderr)
    rows: list[tuple[str, str, str, str]] = []
    ok = True

    # 1. Theory at the zoo's reference input, against the published / hand-derived numbers.
    if target.expected is not None and target.zoo_input_shape is not None:
        steps.set_postfix_str("theory at the reference input")
        ref = jaxrf.receptive_field(target.fn, _spec(target.zoo_input_shape))
        exp = target.expected
        got = (ref.size, ref.stride, ref.padding)
        want = (exp.size, exp.stride, exp.padding)
        match = got == want
        ok &= match
        rows.append(
            (
                f"size / stride / padding at {_shape(target.zoo_input_shape)}",
                " / ".join(_fmt(v) for v in got),
                " / ".join(_fmt(v) for v in want) + f" ({exp.source})",
                "match" if match else "MISMATCH",
            )
        )
    steps.update()

    # 2. Theory at the report's input.
    steps.set_postfix_str("theory")
    rf = jaxrf.receptive_field(target.fn, _spec(shape))
    index = tuple(n // 2 for n in rf.output_shape)
    rows.append(
        (
            f"size / stride / padding at {_shape(shape)}",
            f"{_fmt(rf.size)} / {_fmt(rf.stride)} / {_fmt(rf.padding)}",
            "",
            "",
        )
    )
    rows.append((f"region of centre output {index} (unclipped)", _box(rf.region(index)), "", ""))
    steps.update()

    # 3. Structural support (every dependency the program can have) vs the clipped region.
    steps.set_postfix_str("structural support")
    import jax.numpy as jnp

    actual = jaxrf.actual_receptive_field(target.fn, jnp.zeros(shape), index, mode="structural")
    clipped = rf.region(index, clip=True)
    match = actual.box == clipped
    ok &= match
    rows.append(
        (
            "clipped region vs structural support box",
            _box(clipped),
            _box(actual.box),
            "match" if match else "MISMATCH",
        )
    )
    steps.update()

    # 4. Effective receptive field.
    steps.set_postfix_str("ERF")
    erf = jaxrf.effective_receptive_field(
        target.fn, _inputs(shape, args.samples, args.seed), index, progress=False
    )
    steps.update()
    steps.close()

    width = max(len(r[0]) for r in rows)
    print(f"\n{'quantity'.ljust(width)}  theory (jaxrf.receptive_field)  measured / published")
    for name, theory, measured, verdict in rows:
        tail = f"  {measured}" if measured else ""
        print(f"{name.ljust(width)}  {theory}{tail}{'  -> ' + verdict if verdict else ''}")
    print(
        f"\neffective receptive field of output {index} (mean |input gradient| over {erf.count} "
        "random normal inputs; random weights, so not a trained network's ERF):"
    )
    for name, value in _erf_statistics(erf, rf, index):
        print(f"  {name}: {value}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if erf.map.ndim == 2:
        png = _save_heatmap(
            erf,
            rf,
            index,
            f"{target.name} {_shape(shape[1:3])}: ERF (log scale)",
            out_dir / f"jaxrf_report_{target.name}.png",
            log=True,
            growth=True,
        )
        print(f"wrote {png}")
    print(
        f"{'all checks passed' if ok else 'THEORY AND MEASUREMENT DISAGREE'} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxrf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    analyze = sub.add_parser("analyze", help="per-layer theoretical receptive field table")
    analyze.add_argument("target", help="zoo name, file.py:NAME or module:NAME")
    analyze.add_argument("--input-shape", help="NHWC, e.g. 1,224,224,3 (zoo: default or H,W)")
    analyze.add_argument("--format", choices=("text", "markdown", "latex", "csv"), default="text")
    analyze.add_argument("--seed", type=int, default=0, help="weight seed for zoo models")
    analyze.set_defaults(func=_analyze)

    erf = sub.add_parser("erf", help="effective receptive field heatmap and statistics")
    erf.add_argument("target", help="zoo name, file.py:NAME or module:NAME")
    erf.add_argument("--input-shape", help="NHWC, e.g. 1,64,64,3 (zoo: default or H,W)")
    erf.add_argument("--index", help="output position, e.g. 16,16 (default: the centre)")
    erf.add_argument("--samples", type=int, default=8, help="random normal inputs (default 8)")
    erf.add_argument("--batch-size", type=int, default=None, help="samples per step")
    erf.add_argument("--reduce", choices=("abs", "signed", "positive", "squared"), default="abs")
    erf.add_argument("--log", action="store_true", help="logarithmic colour scale")
    erf.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    erf.add_argument("--out", type=Path, default=Path("erf.png"), help="PNG path (default erf.png)")
    erf.set_defaults(func=_erf)

    report = sub.add_parser(
        "report",
        help="theory vs measured on a zoo model",
        description=f"Theory vs measured on a zoo model (default {REPORT_MODEL} at "
        f"{REPORT_SIZE}x{REPORT_SIZE}, random weights): the analytic size/stride/padding against "
        "the published numbers, the clipped analytic region of the centre output against the "
        "structural support measured by back-propagation, and ERF statistics over a few random "
        "inputs. Writes jaxrf_report_MODEL.png. Exit status 1 if theory and measurement disagree.",
    )
    report.add_argument("model", nargs="?", default=REPORT_MODEL, help=f"zoo name ({REPORT_MODEL})")
    report.add_argument(
        "--input-size",
        type=int,
        default=None,
        help=f"H = W of the measured input (default {REPORT_SIZE} for "
        f"{REPORT_MODEL}, else the model's own)",
    )
    report.add_argument("--samples", type=int, default=4, help="random inputs for the ERF (4)")
    report.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    report.add_argument("--out-dir", default=".", help="where the PNG goes (default: here)")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CommandLineError as error:
        parser.exit(2, f"jaxrf: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
