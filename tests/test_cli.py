"""The jaxrf command line: analyze / erf / report on zoo names and user targets.

Expected numbers are hand derivations: two 3x3 VALID box convolutions have size 5, stride 1,
padding 0 (Distill: 1 + 2 + 2), and their centre output's gradient is the outer product of
[1, 2, 3, 2, 1] with itself (the 2-fold convolution of a box of width 3), whose per-axis
variance is n (k^2 - 1) / 12 = 2 * 8 / 12 (std 1.15) and whose 25 pixels all exceed Luo's
threshold (4.55% of the centre value 9): Luo size sqrt(25) = 5.
"""

import csv
import inspect
import re
import textwrap

import matplotlib.cbook
import numpy as np
import pytest

import jaxrf
from jaxrf import cli

PHOTO = str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))

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
        (
            ["report", "resnet_v1_50", "--input-size", "32", "--stage", "block1_unit3/x"],
            r"--stage \(='block1_unit3/x'\) is not a module path .* are conv1, conv2, conv3\.",
        ),
    ],
    ids=["unknown zoo name", "missing file", "missing attribute", "bad shape", "wrong rank"]
    + ["bad stage"],
)
def test_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_report_on_a_toy_compares_theory_with_measurement(tmp_path, capsys):
    # luo_uniform at 32x32 on the bundled photograph (converted to grey): the zoo's hand
    # derivation 11/1/5; centre output (16, 16) reads [11, 21] on both axes (u = 16 - 5,
    # v = u + 10), all inside the image.
    assert cli.main(["report", "luo_uniform", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "images: 1 image(s) from" in out and "grace_hopper.jpg" in out
    assert "11 / 1 / 5  11 / 1 / 5" in out and "-> match" in out
    assert "centre unit (16, 16), clipped region vs structural support" in out
    assert "[11, 21] x [11, 21]  [11, 21] x [11, 21]  -> match" in out
    assert "all checks passed" in out
    assert (tmp_path / "jaxrf_report_luo_uniform.png").is_file()


@pytest.mark.slow
def test_default_report_runs(tmp_path, capsys):
    # The README's main job: TF-Slim ResNet-50 v1 at 224 on grace_hopper.jpg, blocks 1-3 against
    # Araujo et al.'s published rows (35/8/15, 99/16/47, 291/32/143; block4 483/32/239). By hand:
    # block1's centre unit 14 reads [8 * 14 - 15, + 34] = [97, 131]; block2's unit 7 reads
    # [16 * 7 - 47, + 98] = [65, 163]; block3's centre region covers the image, so its corner
    # unit 0 is probed: [-143, 147] clipped to [0, 147].
    assert cli.main(["report", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "483 / 32 / 239  483 / 32 / 239" in out and "all checks passed" in out
    for published in ("35 / 8 / 15  35 / 8 / 15", "99 / 16 / 47  99 / 16 / 47"):
        assert published in out
    assert "[97, 131] x [97, 131]  [97, 131] x [97, 131]  -> match" in out
    assert "[65, 163] x [65, 163]  [65, 163] x [65, 163]  -> match" in out
    assert "corner unit (0, 0)" in out and "[0, 147] x [0, 147]  [0, 147] x [0, 147]" in out


@pytest.fixture
def grey_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (12, 10), np.uint8)).save(folder / name)
    return folder


def test_erf_on_images_says_which(user_file, grey_folder, tmp_path, capsys):
    # The two box filters are linear, so the ERF is the closed form whatever the images.
    out_png = tmp_path / "erf.png"
    argv = ["erf", f"{user_file}:make", "--images", str(grey_folder), "--out", str(out_png)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "images: 2 image(s) from" in text and "a.png, b.png" in text
    assert "centre crop 9x9" in text and "ERF over 2 inputs" in text
    assert "ERF std (px, per axis): 1.15, 1.15" in text


def test_erf_images_by_glob_with_normalisation(user_file, grey_folder, capsys):
    argv = ["erf", f"{user_file}:make", "--images", str(grey_folder / "b*.png"), "--size", "9"]
    argv += ["--mean", "0.5", "--std", "0.25", "--out", str(grey_folder / "e.png")]
    assert cli.main(argv) == 0
    assert "1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mean", "half"], r"--mean \(='half'\) must be numbers"),
        (
            ["--size", "8", "--crop", "9"],
            r"--images: image '.*a\.png' is 10x8 after resizing, smaller than crop 9x9",
        ),
        (["--layer", "conv7"], r"--layer \(='conv7'\) is not a layer.*conv0, conv1"),
    ],
    ids=["mean", "too small", "unknown layer"],
)
def test_image_and_layer_errors_exit_2(user_file, grey_folder, extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "erf",
                f"{user_file}:make",
                "--images",
                str(grey_folder),
                "--out",
                str(grey_folder / "x.png"),
                *extra,
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_corrupt_image_exits_2_naming_it(user_file, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n not a png")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["erf", f"{user_file}:make", "--images", str(tmp_path / "broken.png")])
    assert exit_info.value.code == 2
    assert "cannot read image" in capsys.readouterr().err


def test_rgb_photo_for_a_grey_network_needs_convert(user_file, capsys):
    with pytest.raises(SystemExit):
        cli.main(["erf", f"{user_file}:make", "--images", PHOTO])
    assert "colour mode 'RGB', not 'L'" in capsys.readouterr().err


HAS_LAYER_TAPS = "layer" in inspect.signature(jaxrf.effective_receptive_field).parameters


@pytest.mark.slow  # 6 s; CI runs the slow set after the default run
@pytest.mark.skipif(not HAS_LAYER_TAPS, reason="needs effective_receptive_field(layer=)")
def test_erf_at_a_named_layer_on_a_folder(tmp_path, capsys):
    # torchvision ResNet-50 at 32x32, after layer1 (hand derivation in jaxrf/models/resnet.py):
    # RF 35, stride 4, padding 17, output 8x8; centre unit 4 reads [16 - 17, 16 + 17] = [-1, 33].
    from PIL import Image

    Image.open(PHOTO).save(tmp_path / "photo.png")
    argv = ["erf", "resnet50_torchvision", "--images", str(tmp_path), "--size", "32"]
    argv += ["--layer", "TorchResNet/layer1_2", "--out", str(tmp_path / "erf.png")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "photo.png" in out and "layer TorchResNet/layer1_2" in out
    assert "size 35, stride 4, padding 17, region [-1, 33] x [-1, 33]" in out


@pytest.mark.skipif(not hasattr(jaxrf, "layer_report"), reason="needs jaxrf.layer_report")
def test_layers_command_on_a_bundled_photo(capsys):
    # VGG-16 at 32x32 (Araujo et al.'s rows conv1/conv1_1 3/1/1 and conv2/conv2_1 10/2/4):
    # centre unit 16 of conv1_1 reads [16 - 1, 16 + 1] = [15, 17]; unit 8 of conv2_1 (16x16
    # map) reads [2 * 8 - 4, + 9] = [12, 21]; the structural box is the same.
    argv = ["layers", "vgg_16", "--images", PHOTO, "--size", "32", "--format", "csv"]
    argv += ["--layer", "VGG16/conv1_1/conv", "--layer", "VGG16/conv2_1/conv"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "grace_hopper.jpg" in captured.err
    rows = list(csv.DictReader(captured.out.strip().splitlines()))
    assert [r["name"] for r in rows] == ["VGG16/conv1_1/conv", "VGG16/conv2_1/conv"]
    first, second = rows
    assert (first["RF size"], first["effective stride"], first["effective padding"]) == (
        "3",
        "1",
        "1",
    )
    assert first["RF region"] == first["support box"] == "[15,17]x[15,17]"
    assert (second["RF size"], second["effective stride"], second["effective padding"]) == (
        "10",
        "2",
        "4",
    )
    assert second["RF region"] == second["support box"] == "[12,21]x[12,21]"


def test_layers_command_forwards_batch_size(monkeypatch, capsys):
    # --batch-size reaches layer_report's ERF (3 random samples, steps of 2); the conv1_1
    # unit's theory and structural box are as in the test above.
    seen = {}
    real = jaxrf.layer_report

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(jaxrf, "layer_report", spy)
    argv = ["layers", "vgg_16", "--input-shape", "32,32", "--samples", "3", "--batch-size", "2"]
    argv += ["--layer", "VGG16/conv1_1/conv", "--format", "csv"]
    assert cli.main(argv) == 0
    assert seen["batch_size"] == 2
    rows = list(csv.DictReader(capsys.readouterr().out.strip().splitlines()))
    assert rows[0]["RF region"] == rows[0]["support box"] == "[15,17]x[15,17]"


def test_report_stages_have_araujo_rows():
    # Araujo et al., Distill 2019, receptive-field table, input 224: resnet_v1_50/block1 35/8/15,
    # block2 99/16/47, block3 291/32/143; nothing for a stage that is no end point of the table.
    from jaxrf import _cli_report

    got = [
        _cli_report.published("resnet_v1_50", s, 224)[:3]
        for s in _cli_report.STAGES["resnet_v1_50"]
    ]
    assert got == [(35, 8, 15), (99, 16, 47), (291, 32, 143)]
    assert _cli_report.published("resnet_v1_50", "block1_unit1", 224) is None
    assert _cli_report.published("luo_uniform", None, 32) is None


NNX_MODEL = """
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(2, 2, (3, 3), rngs=rngs)

    def __call__(self, x):
        return x + self.conv1(x)


class Net(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(1, 2, (3, 3), rngs=rngs)
        self.blocks = nnx.List([Block(rngs), Block(rngs)])

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


net = Net(nnx.Rngs(0))
"""


def test_analyze_names_nnx_layers_by_module_path(tmp_path, capsys):
    path = tmp_path / "nnx_model.py"
    path.write_text(NNX_MODEL)
    argv = ["analyze", f"{path}:net", "--input-shape", "1x16x16x1", "--format", "csv"]
    assert cli.main(argv) == 0
    names = [row.split(",")[0] for row in capsys.readouterr().out.strip().splitlines()[1:]]
    # three 3x3 SAME convs: stem, then each block's conv1 and its residual add
    assert names[0] == "stem" and "blocks.0.conv1" in names and "blocks.1.conv1" in names
