"""The guard against XLA:CPU's YNNPACK miscompilation (jaxrf._xla).

With jaxlib 0.10.2 a convolution summed over its output channels in one program (a gradient
map of a 64 -> 3 convolution) came back all zero in about half of the fresh processes; the
layerwise experiment's structural box of VGG-16's pool1 was empty in CI that way. The guard
turns YNNPACK's reduce fusions off (the convolution, abs and channel sum compiled as one YNNPACK
subgraph): in XLA_FLAGS at import, and per program for what jaxrf compiles.
"""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import jaxrf
from jaxrf import _gradient, _xla

DN = ("NHWC", "HWIO", "NHWC")


def _net(x):
    """3 -> 64 -> 64 channels, two 3x3 SAME convolutions with kernels of ones."""
    for c_in in (3, 64):
        x = jax.lax.conv_general_dilated(
            x, jnp.ones((3, 3, c_in, 64)), (1, 1), "SAME", dimension_numbers=DN
        )
    return x


def test_configure_appends_only_when_safe(monkeypatch):
    monkeypatch.setattr(_xla, "_CONFIGURED", _xla._CONFIGURED)  # restored afterwards
    monkeypatch.setattr(_xla, "_backends_started", lambda: False)
    monkeypatch.delenv(_xla.OPT_OUT, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert _xla.configure()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    ]
    # A value of the user's own is kept; so is everything when opted out or already started.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert not _xla.configure()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(_xla.OPT_OUT, "1")
    assert not _xla.configure() and os.environ["XLA_FLAGS"] == ""
    monkeypatch.delenv(_xla.OPT_OUT)
    monkeypatch.setattr(_xla, "_backends_started", lambda: True)
    assert not _xla.configure() and os.environ["XLA_FLAGS"] == ""
    # An older jaxlib would abort on an unknown flag in XLA_FLAGS: left alone.
    monkeypatch.setattr(_xla, "_backends_started", lambda: False)
    monkeypatch.setattr(_xla, "_jaxlib_version", lambda: (0, 4, 30))
    assert not _xla.configure() and os.environ["XLA_FLAGS"] == ""


def _ynn_fusions(compiled_text: str) -> list[list[str]]:
    """The operations inside each YNNPACK fusion of a compiled program's HLO text."""
    bodies = {}
    for block in compiled_text.split("\n\n"):
        head = re.match(r"%(\S+) ", block.strip())
        if head:
            bodies[head.group(1)] = block
    called = re.findall(r"calls=%(\S+), [^\n]*__ynn_fusion", compiled_text)
    return [re.findall(r"= \S+ ([\w-]+)\(", bodies[name]) for name in called]


def test_gradient_map_program_has_no_ynn_reduce_fusion():
    """The compiled gradient-map program of the pattern that was miscompiled: YNNPACK still runs
    the convolutions, one per fusion, but never a convolution fused with the channel sum."""
    x = jnp.zeros((1, 64, 64, 3))
    layout = _gradient.layouts(x.shape, (1, 64, 64, 64), None, None)
    compiled = _gradient.map_at_index.lower(
        _net, x, (32, 32), jnp.ones(64), in_layout=layout[0], out_layout=layout[1], reduce="abs"
    ).compile()
    fusions = _ynn_fusions(compiled.as_text())
    assert fusions, "expected YNNPACK to run the convolutions"
    assert all("reduce" not in ops for ops in fusions), fusions


SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
if sys.argv[1] == "jax-first":
    jnp.ones(1).block_until_ready()
import jaxrf
from jaxrf import _xla
dn = ("NHWC", "HWIO", "NHWC")
def net(x):
    for c_in in (3, 64):
        x = jax.lax.conv_general_dilated(x, jnp.ones((3, 3, c_in, 64)), (1, 1), "SAME",
                                         dimension_numbers=dn)
    return x
x = np.zeros((1, 64, 64, 3), np.float32)
boxes = [jaxrf.actual_receptive_field(net, x, (32, 32), mode=m, nonfinite="skip").box
         for m in ("structural", "measured")]
grad = np.asarray(jaxrf.gradient_map(net, x, (32, 32), nonfinite="skip"))[0]
paths = np.array([1, 2, 3, 2, 1])  # middle positions linking offset d to the unit: 3 - |d|
expected = np.zeros((64, 64))
expected[30:35, 30:35] = 64 * 64 * 3 * np.outer(paths, paths)
print(boxes, np.array_equal(grad, expected), "ynn" in str(_xla.compiler_options()))
"""


@pytest.mark.parametrize(
    "order", ["jaxrf-first", pytest.param("jax-first", marks=pytest.mark.slow)]
)
def test_fresh_process_maps_are_right(tmp_path, order):
    """Two stacked 3x3 convolutions with kernels of ones, 3 -> 64 -> 64 channels, at 64 x 64:
    unit (32, 32) reads [30, 34] on both axes, structurally and measured, and its gradient map
    (|d/dx| summed over the 3 input channels) at offset (dy, dx) is 64 * 64 * 3 paths times
    (3 - |dy|)(3 - |dx|) middle positions. Whether JAX started before ``import jaxrf`` (then
    the per-program options guard it) or not (then XLA_FLAGS does). Unguarded
    (JAXRF_KEEP_XLA_FLAGS=1), 2 of 6 processes gave an empty box or NaN maps."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla.OPT_OUT)}
    for _ in range(3):  # the miscompilation hit about half of the processes
        out = subprocess.run(
            [sys.executable, str(script), order], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        per_program = order == "jax-first"
        box = ((30, 34), (30, 34))
        assert out.stdout.split("\n")[0] == f"{[box, box]} True {per_program}"


def test_lowered_erf_step_runs_xla_convolutions(monkeypatch):
    """Under a CPU lowering the ERF step leaves convolutions to XLA (faster than YNNPACK's on
    the machines measured, see jaxrf._xla) and dots to YNNPACK; with lowering='none' YNNPACK
    runs the convolutions as in every other jaxrf program."""
    from jaxrf import _erf

    w3 = jnp.ones((3, 3, 64, 64))  # YNNPACK takes convolutions of this size, not tiny ones
    w1 = jnp.ones((64, 64))

    def net(x):
        h = jax.lax.conv_general_dilated(x, w3, (1, 1), "SAME", dimension_numbers=DN)
        return h @ w1

    calls = {}
    for key, step in dict(_erf._BATCH_SUM).items():

        def spy(*args, _step=step, _key=key, **kwargs):
            calls[_key] = (args, kwargs)
            return _step(*args, **kwargs)

        spy.lower = step.lower
        monkeypatch.setitem(_erf._BATCH_SUM, key, spy)
    x = jnp.zeros((2, 32, 32, 64))
    for lowering in ("matmul", "none"):
        jaxrf.effective_receptive_field(net, x, lowering=lowering)
    texts = {
        key: step.lower(*calls[key][0], **calls[key][1]).compile().as_text()
        for key, step in _erf._BATCH_SUM.items()
    }
    lowered = [op for ops in _ynn_fusions(texts["lowered"]) for op in ops]
    assert "convolution" in texts["lowered"] and "convolution" not in lowered
    assert "dot" in lowered
    plain = [op for ops in _ynn_fusions(texts["none"]) for op in ops]
    assert "convolution" in plain


def test_lowered_value_respects_the_user(monkeypatch):
    """A flag value of the user's own in XLA_FLAGS, or the opt-out, turns the speed option off
    too; the guard set by configure() does not."""
    monkeypatch.setattr(_xla, "_CONFIGURED", True)
    monkeypatch.delenv(_xla.OPT_OUT, raising=False)
    monkeypatch.setenv("XLA_FLAGS", f"--{_xla.FLAG}={_xla.ENV_VALUE}")
    _xla.compiler_options.cache_clear()
    try:
        assert _xla.compiler_options(_xla.LOWERED_VALUE) == {_xla.FLAG: _xla.LOWERED_VALUE}
        assert _xla.compiler_options() == {}  # the same guard is in XLA_FLAGS already
        _xla.compiler_options.cache_clear()
        monkeypatch.setattr(_xla, "_CONFIGURED", False)  # the user's own value
        assert _xla.compiler_options(_xla.LOWERED_VALUE) == {}
        _xla.compiler_options.cache_clear()
        monkeypatch.setattr(_xla, "_CONFIGURED", True)
        monkeypatch.setenv(_xla.OPT_OUT, "1")
        assert _xla.compiler_options(_xla.LOWERED_VALUE) == {}
    finally:
        _xla.compiler_options.cache_clear()
