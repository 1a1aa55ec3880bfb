"""jaxrf.layer_table: the per-layer records rendered as text, Markdown, LaTeX and CSV."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jaxrf

# conv_1 3x3: r 3; pool_1 2x2 s2: r 3 + 1 = 4, S 2; conv_2 (3, 1) s1 on 8x8 -> 3x4:
# H: r 4 + 2*2 = 8, W: 4; conv_2 pads H by 1: P 0 + 2*1 = 2.
LAYERS = [
    jaxrf.Layer(3, name="conv_1"),
    jaxrf.Layer(2, stride=2, name="pool_1", op="max_pool"),
    jaxrf.Layer((3, 1), padding=[1, 0], name="conv_2"),
]

EXPECTED = {
    "csv": (
        "name,op,output shape,kernel,stride,RF size,effective stride,effective padding,aligned\n"
        "conv_1,conv,8x8,3,1,3,1,0,yes\n"
        "pool_1,max_pool,4x4,2,2,4,2,0,yes\n"
        "conv_2,conv,4x4,3x1,1,8x4,2,2x0,yes\n"
    ),
    "markdown": (
        "| name | op | output shape | kernel | stride | RF size | effective stride | "
        "effective padding | aligned |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        "| conv_1 | conv | 8x8 | 3 | 1 | 3 | 1 | 0 | yes |\n"
        "| pool_1 | max_pool | 4x4 | 2 | 2 | 4 | 2 | 0 | yes |\n"
        "| conv_2 | conv | 4x4 | 3x1 | 1 | 8x4 | 2 | 2x0 | yes |\n"
    ),
    "latex": (
        "\\begin{tabular}{llrrrrrrr}\n\\hline\n"
        "name & op & output shape & kernel & stride & RF size & effective stride & "
        "effective padding & aligned \\\\\n\\hline\n"
        "conv\\_1 & conv & 8x8 & 3 & 1 & 3 & 1 & 0 & yes \\\\\n"
        "pool\\_1 & max\\_pool & 4x4 & 2 & 2 & 4 & 2 & 0 & yes \\\\\n"
        "conv\\_2 & conv & 4x4 & 3x1 & 1 & 8x4 & 2 & 2x0 & yes \\\\\n"
        "\\hline\n\\end{tabular}\n"
    ),
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_formats(fmt):
    rf = jaxrf.from_layers(LAYERS, (10, 10))
    assert jaxrf.layer_table(rf, fmt) == EXPECTED[fmt]


def test_text_columns_line_up():
    text = jaxrf.layer_table(jaxrf.from_layers(LAYERS, (10, 10)))
    lines = text.splitlines()
    assert lines[0].split() == [
        "name",
        "op",
        "output",
        "shape",
        "kernel",
        "stride",
        "RF",
        "size",
    ] + [
        "effective",
        "stride",
        "effective",
        "padding",
        "aligned",
    ]
    assert set(lines[1]) == {"-", " "}
    assert lines[4].split() == ["conv_2", "conv", "4x4", "3x1", "1", "8x4", "2", "2x0", "yes"]
    start = lines[0].index("RF size")
    assert [line[start : start + 3].strip() for line in lines[2:]] == ["3", "4", "8x4"]


def test_global_and_merge_rows_from_a_trace():
    def net(x):
        y = lax.conv_general_dilated(
            x, jnp.ones((3, 3, 1, 1)), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return (x + y).mean(axis=(1, 2))

    rf = jaxrf.receptive_field(net, jax.ShapeDtypeStruct((1, 6, 6, 1), jnp.float32))
    assert jaxrf.layer_table(rf, "csv").splitlines()[1:] == [
        "conv0,conv,6x6,3,1,3,1,1,yes",
        "add0,add,6x6,-,-,3,1,1,yes",
        "global_reduce_sum0,global_reduce_sum,1x1,-,-,global,global,global,yes",
    ]


def test_bad_format():
    with pytest.raises(ValueError, match=r"`fmt` \(='html'\) must be one of 'text', 'markdown'"):
        jaxrf.layer_table(jaxrf.from_layers(LAYERS, (10, 10)), "html")


def test_diagnostic_columns():
    # residual block (tests/test_diagnostics.py derives these): at 5x5 the border is a, b is
    # unproductive, post covers; the add keeps r 7 for its region, r_min 3 through the shortcut
    layers = [
        jaxrf.Layer(3, padding=1, name="stem"),
        jaxrf.Parallel(
            [
                [jaxrf.Layer(3, padding=1, name="a"), jaxrf.Layer(3, padding=1, name="b")],
                [jaxrf.Layer(1, name="s")],
            ],
            name="add",
        ),
        jaxrf.Layer(3, padding=1, name="post"),
    ]
    table = jaxrf.layer_table(jaxrf.from_layers(layers, (5, 5)), "csv", diagnostics=True)
    assert table.splitlines() == [
        "name,op,output shape,kernel,stride,RF size,effective stride,effective padding,aligned,"
        "min RF,max RF,status",
        "stem,conv,5x5,3,1,3,1,1,yes,3,3,-",
        "a,conv,5x5,3,1,5,1,2,yes,5,5,border",
        "b,conv,5x5,3,1,7,1,3,yes,7,7,unproductive",
        "s,conv,5x5,1,1,3,1,1,yes,3,3,-",
        "add,add,5x5,-,-,7,1,3,yes,3,7,-",
        "post,conv,5x5,3,1,9,1,4,yes,5,9,covers",
    ]
    latex = jaxrf.layer_table(jaxrf.from_layers(layers, (5, 5)), "latex", diagnostics=True)
    assert latex.splitlines()[0] == r"\begin{tabular}{ll" + "r" * 10 + "}"
    assert latex.splitlines()[4] == r"stem & conv & 5x5 & 3 & 1 & 3 & 1 & 1 & yes & 3 & 3 & - \\"
