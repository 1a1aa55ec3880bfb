"""MTCNN (Zhang et al. 2016) in Flax with the ``mtcnn`` wheel's trained weights.

Expected values:

* Receptive fields by hand (Distill's ``r = 1 + sum (k_l - 1) S_{l-1}``, all convolutions VALID):
  P-Net 3x3 conv, 2/2 pool, 3x3, 3x3 -> ``1 + 2 + 1 + 2*2 + 2*2 = 12``, stride 2 (the paper's
  12x12 proposal window slid with stride 2); R-Net trunk 17 / 4; O-Net trunk 33 / 8.
* Face decisions: ``skimage.data.lfw_subset()`` is labelled by its provider (first 100 images
  faces from LFW, last 100 non-face crops). A trained detector must call them right at each
  network's input size; random weights would score about half, so this proves the weights are
  loaded in the right order and layout (a width/height transpose of the input already drops
  P-Net to about a third of the faces).
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf
from jaxrf.models import mtcnn

pytest.importorskip("joblib")
pytest.importorskip("lz4")
if importlib.util.find_spec("mtcnn") is None:  # importing mtcnn needs TensorFlow: only find it
    pytest.skip(
        "the mtcnn wheel is not installed (pip install 'jaxrf[images]')", allow_module_level=True
    )
skimage_data = pytest.importorskip("skimage.data")


@pytest.mark.parametrize(
    "name, side, size, stride, out",
    [
        ("pnet", 12, 12, 2, 1),
        ("pnet", 48, 12, 2, 19),
        ("rnet", 24, 17, 4, 3),
        ("onet", 48, 33, 8, 3),
    ],
)
def test_receptive_field_by_hand(name, side, size, stride, out):
    fn = mtcnn.mtcnn_net(name, "features")
    rf = jaxrf.receptive_field(fn, jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))
    assert (rf.size, rf.stride, rf.padding, rf.output_shape) == (
        (size, size),
        (stride, stride),
        (0, 0),
        (out, out),
    )


def test_pnet_is_a_12x12_window_with_stride_2_structurally():
    # Output (i, j) of P-Net reads input rows/cols [2i, 2i + 11] (padding 0): (3, 5) -> [6, 17] x
    # [10, 21], measured by back-propagation through the trained network.
    fn = mtcnn.mtcnn_net("pnet", "logits")
    x = jnp.zeros((1, 32, 32, 3))
    box = jaxrf.actual_receptive_field(fn, x, (3, 5), mode="structural").box
    assert box == ((6, 17), (10, 21))


def _lfw(side: int) -> np.ndarray:
    from PIL import Image

    faces = skimage_data.lfw_subset()  # (200, 25, 25) grey in [0, 1]
    images = [
        np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR))
        for a in faces
    ]
    return mtcnn.normalise(np.repeat(np.stack(images)[..., None], 3, axis=-1))


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_trained_weights_tell_faces_from_non_faces(name):
    x = _lfw(mtcnn.NATIVE_SIZE[name])
    prob = np.asarray(jax.jit(mtcnn.mtcnn_net(name, "face"))(x)).reshape(200, 2)[:, 1]
    assert (prob[:100] > 0.5).sum() >= 95, prob[:100]
    assert (prob[100:] < 0.5).sum() >= 95, prob[100:]


def test_random_weights_do_not_detect_faces():
    x = _lfw(12)
    prob = np.asarray(mtcnn.mtcnn_net("pnet", "face", trained=False)(x))[:, 0, 0, 1]
    correct = (prob[:100] > 0.5).sum() + (prob[100:] < 0.5).sum()
    assert correct < 150  # chance is 100 of 200; the trained P-Net gets >= 190


def test_weights_layout():
    params = mtcnn.mtcnn_params("pnet")["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 10)
    assert params["prelu3"]["alpha"].shape == (1, 1, 32)
    assert params["conv4_2"]["kernel"].shape == (1, 1, 32, 2)
    assert mtcnn.mtcnn_params("onet")["params"]["fc5"]["kernel"].shape == (1152, 256)


def test_bad_names_and_outputs():
    with pytest.raises(ValueError, match=r"`name` \(='qnet'\) must be one of"):
        mtcnn.mtcnn_params("qnet")
    with pytest.raises(ValueError, match=r"`output` \(='eyes'\) must be one of"):
        mtcnn.mtcnn_net("pnet", "eyes")(jnp.zeros((1, 12, 12, 3)))


def test_missing_wheel_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"jaxrf\[images\]"):
        mtcnn.weights_path("pnet")


@pytest.mark.slow  # 6 s; CI runs the slow set after the default run
def test_experiment_measures_one_network(monkeypatch):
    # Smoke test of experiments/erf_trained_vs_random.py on 4 LFW faces: P-Net's unit reads the
    # whole 12x12 input (RF 12, hand-derived), so its ERF lies inside it and the Luo size is at
    # most 12; the trained P-Net calls these faces faces.
    import pathlib
    import sys

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parents[1] / "experiments"))
    sys.modules.pop("erf_trained_vs_random", None)
    import erf_trained_vs_random as experiment

    faces = experiment.image_sets(quick=True)["faces"][:4]
    row, erf_map = experiment.measure("pnet", True, faces)
    assert erf_map.shape == (12, 12) and row["rf_size"] == 12
    assert 0 < row["luo_size"] <= 12 and row["mean_face_probability"] > 0.5


# Boxes (left, top, right, bottom) in matplotlib's grace_hopper.jpg (512 wide, 600 high), read
# off the photograph: her face from below the cap to the chin, and three patches without a face.
GRACE_HOPPER = {
    "face": (160, 140, 360, 340),
    "sky": (390, 180, 510, 300),
    "jacket": (330, 420, 480, 570),
    "flag": (0, 0, 140, 140),
}


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_face_decisions_on_the_bundled_photograph(name):
    import matplotlib.cbook
    from PIL import Image

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    side = mtcnn.NATIVE_SIZE[name]
    crops = [
        photo.convert("RGB").crop(box).resize((side, side), Image.BILINEAR)
        for box in GRACE_HOPPER.values()
    ]
    x = mtcnn.normalise(np.stack([np.asarray(c) for c in crops]))
    face = np.asarray(mtcnn.mtcnn_net(name, "face")(x)).reshape(len(crops), 2)[:, 1]
    assert face[0] > 0.9 and (face[1:] < 0.5).all(), dict(zip(GRACE_HOPPER, face, strict=True))
