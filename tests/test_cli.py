"""The jaxrf command line: analyze / erf / report on zoo names and user targets.

Expected numbers are hand derivations: two 3x3 VALID box convolutions have size 5, stride 1,
padding 0 (Distill: 1 + 2 + 2), and their centre output's gradient is the outer product of
[1, 2, 3, 2, 1] with itself (the 2-fold convolution of a box of width 3), whose per-axis
variance is n (k^2 - 1) / 12 = 2 * 8 / 12 (std 1.15) and whose 25 pixels all exceed Luo's
threshold (4.55% of the centre value 9): Luo size sqrt(25) = 5.
"""

import re
import textwrap

import pytest

from jaxrf import cli

USER_MODEL = textwrap.dedent(
    """
    import jax
    import jax.numpy as jnp

    W = jnp.ones((3, 3, 1, 1))


    def net(x):  # NHWC, two 3x3 VALID box filters
        dn = ("NHWC", "HWIO", "NHWC")
        for _ in range(2):
            x = jax.lax.conv_general_dilated(x, W, (1, 1), "VALID", dimension_numbers=dn)
        return x


    def make():
        return net, (1, 9, 9, 1)
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(USER_MODEL)
    return path


def test_analyze_a_user_factory_as_csv(user_file, capsys):
    assert cli.main(["analyze", f"{user_file}:make", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    # columns: name, op, output shape, kernel, stride, RF size, eff. stride, eff. padding, aligned
    sizes = [r.split(",")[2:8] for r in rows[1:]]
    assert sizes == [["7x7", "3", "1", "3", "1", "0"], ["5x5", "3", "1", "5", "1", "0"]]


def test_analyze_a_plain_function_needs_an_input_shape(user_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", f"{user_file}:net"])
    assert exit_info.value.code == 2
    assert "needs --input-shape" in capsys.readouterr().err
    assert cli.main(["analyze", f"{user_file}:net", "--input-shape", "1x11x11x1"]) == 0
    out = capsys.readouterr().out
    assert "at input 1x11x11x1" in out and "size (5, 5), effective stride (1, 1)" in out


def test_analyze_a_zoo_model_in_markdown(capsys):
    # luo_uniform: five 3x3 convs with padding 1 -> sizes 3, 5, 7, 9, 11 (hand derivation).
    assert cli.main(["analyze", "luo_uniform", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| name | op |")
    assert [line.split(" | ")[5] for line in lines[2:] if "conv" in line.split(" | ")[1]] == [
        "3",
        "5",
        "7",
        "9",
        "11",
    ]


def test_erf_writes_a_heatmap_and_the_closed_form_statistics(user_file, tmp_path, capsys):
    out = tmp_path / "erf.png"
    code = cli.main(["erf", f"{user_file}:make", "--samples", "2", "--out", str(out), "--log"])
    assert code == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    assert "output index (2, 2)" in text
    assert "ERF std (px, per axis): 1.15, 1.15" in text
    assert "5.00 (25 px)" in text
    assert "ERF mass inside the clipped theoretical region: 100.0%" in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["analyze", "no_such_net"], r"neither a zoo name.*resnet_v1_50"),
        (["analyze", "missing.py:make"], r"file 'missing.py' does not exist"),
        (["analyze", "json:nope"], r"'json' has no attribute 'nope'"),
        (["analyze", "luo_uniform", "--input-shape", "1,2,x"], r"--input-shape \(='1,2,x'\)"),
        (["analyze", "luo_uniform", "--input-shape", "1,32,32"], r"H,W or the full NHWC shape"),
    ],
    ids=["unknown zoo name", "missing file", "missing attribute", "bad shape", "wrong rank"],
)
def test_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_report_on_a_toy_compares_theory_with_measurement(tmp_path, capsys):
    # luo_uniform at 32x32: published-style check against the zoo's hand derivation 11/1/5,
    # centre output (16, 16) reads [11, 21] on both axes (u = 16 - 5, v = u + 10), all inside.
    assert cli.main(["report", "luo_uniform", "--samples", "2", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "11 / 1 / 5  11 / 1 / 5" in out and "-> match" in out
    assert "[11, 21] x [11, 21]  [11, 21] x [11, 21]  -> match" in out
    assert "all checks passed" in out
    assert (tmp_path / "jaxrf_report_luo_uniform.png").is_file()


@pytest.mark.slow
def test_default_report_runs(tmp_path, capsys):
    # The README's main job: resnet_v1_50 at its reference input matches Araujo et al.'s
    # published 483 / 32 / 239.
    assert cli.main(["report", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "483 / 32 / 239  483 / 32 / 239" in out and "all checks passed" in out
