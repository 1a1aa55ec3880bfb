"""Long ERF runs lose nothing: checkpoints, resumption after a kill, NaN batches, empty inputs."""

import os
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrf

ROOT = Path(__file__).resolve().parents[1]

# The run killed mid-way: 12 batches of 2 samples, the stream slowed down after batch 3 so the
# kill lands after a checkpoint (every 2 batches) and before the end.
SCRIPT = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    import jaxrf

    jax.config.update("jax_enable_x64", True)
    W1 = np.random.default_rng(1).normal(size=(3, 2, 3))
    W2 = np.random.default_rng(2).normal(size=(3, 3, 1))
    DN = ("NWC", "WIO", "NWC")


    def net(x):
        conv = jax.lax.conv_general_dilated
        h = jnp.tanh(conv(x, jnp.asarray(W1), (1,), "SAME", dimension_numbers=DN))
        return conv(h, jnp.asarray(W2), (1,), "SAME", dimension_numbers=DN)


    def stream(delay=0.0):
        rng = np.random.default_rng(0)
        for b in range(12):
            if b >= 3:
                time.sleep(delay)
            yield rng.normal(size=(2, 15, 2))


    if __name__ == "__main__":
        jaxrf.effective_receptive_field(
            net, stream(delay=2.0), checkpoint=sys.argv[1], checkpoint_every=2, progress=False
        )
    """
)


def _run_killed(script: Path, path: Path) -> None:
    """Start the slow run in a subprocess and SIGKILL it once a checkpoint exists."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, str(script), str(path)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not path.exists():
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    path = tmp_path / "erf.npz"
    _run_killed(script, path)
    with np.load(path) as saved:
        count, _, draw, batch, seen = saved["state"].tolist()
    assert 0 < batch < 12 and count == seen == 2 * batch and draw == 0  # interrupted
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no torn file
    x64 = jax.config.jax_enable_x64  # the script turns float64 on globally: undo it after
    try:
        ns = runpy.run_path(str(script))  # the same network and stream, in this process
    finally:
        jax.config.update("jax_enable_x64", x64)
    with jax.enable_x64(True):
        resumed = jaxrf.effective_receptive_field(ns["net"], ns["stream"](), checkpoint=path)
        whole = jaxrf.effective_receptive_field(ns["net"], ns["stream"]())
        # A checkpoint of another run is refused, naming what differs.
        with pytest.raises(ValueError, match=r"other arguments \(index: saved \[\[7\]\], now"):
            jaxrf.effective_receptive_field(ns["net"], ns["stream"](), (3,), checkpoint=path)
    assert resumed.count == whole.count == 24
    np.testing.assert_allclose(resumed.map, whole.map, rtol=1e-12, atol=0)
    with np.load(path) as saved:  # the finished run is saved too
        assert saved["state"].tolist() == [24, 0, 1, 0, 0]


def test_checkpoint_of_weight_draws_resumes_in_the_right_draw(tmp_path):
    with jax.enable_x64(True):
        _weight_draws_resume(tmp_path)


def _weight_draws_resume(tmp_path):  # runs under float64 (the caller's context)
    # Interrupt "by hand": a stream that fails in draw 1, batch 1; the rerun finishes the job.
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1, 1)), jnp.float64)
    fn = lambda p, x: jnp.tanh(p * jax.lax.conv(x.transpose(0, 2, 1), w.transpose(2, 1, 0),  # noqa: E731
                                                    (1,), "SAME").transpose(0, 2, 1))  # fmt: skip
    init_fn = lambda key: jax.random.normal(key, (), jnp.float64)  # noqa: E731
    xs = [np.random.default_rng(b).normal(size=(2, 9, 1)) for b in range(3)]

    class Flaky:  # re-iterable; raises once, in draw 1
        runs = 0

        def __iter__(self):
            Flaky.runs += 1
            for b, x in enumerate(xs):
                if Flaky.runs == 2 and b == 1:
                    raise KeyboardInterrupt
                yield x

    kw = dict(init_fn=init_fn, num_draws=2, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        jaxrf.effective_receptive_field(fn, Flaky(), checkpoint=tmp_path / "c.npz", **kw)
    resumed = jaxrf.effective_receptive_field(fn, Flaky(), checkpoint=tmp_path / "c.npz", **kw)
    whole = jaxrf.effective_receptive_field(fn, xs, **kw)
    assert resumed.count == whole.count == 12
    np.testing.assert_allclose(resumed.map, whole.map, rtol=1e-12, atol=0)


def _bad_stream():
    # sqrt has an infinite derivative at 0: batch 1 (images 2..3) holds one zero, at sample 3.
    return [np.ones((2, 5, 1)), np.ones((2, 5, 1)) * [[[1]], [[0]]], 4 * np.ones((2, 5, 1))]


def test_a_nan_batch_is_reported_with_its_position_and_keeps_the_sums(tmp_path):
    with pytest.raises(
        jaxrf.NonFiniteGradientError, match=r"batch 1 \(images 2\.\.3 of the stream\).*sample 3"
    ) as caught:
        jaxrf.effective_receptive_field(jnp.sqrt, _bad_stream(), (2,), checkpoint=tmp_path / "c")
    partial = caught.value.partial
    assert partial.count == 2 and partial.map.tolist() == [0, 0, 0.5, 0, 0]  # d sqrt/dx at 1
    with pytest.warns(jaxrf.NonFiniteGradientWarning, match=r"batch 1 \(images 2\.\.3"):
        erf = jaxrf.effective_receptive_field(jnp.sqrt, _bad_stream(), (2,), nonfinite="warn")
    # Mean of 1/(2 sqrt(x)) over the 5 finite samples: 3 at x=1 (0.5), 2 at x=4 (0.25).
    assert erf.count == 5 and erf.nonfinite_samples == 1
    assert erf.map[2] == pytest.approx((3 * 0.5 + 2 * 0.25) / 5)


EMPTY = np.zeros((0, 16, 16, 1), np.float32)
PROBES = {
    "gradient_map": lambda x: jaxrf.gradient_map(jnp.tanh, x, (0, 0)),
    "actual_measured": lambda x: jaxrf.actual_receptive_field(jnp.tanh, x, (0, 0)),
    "actual_structural": lambda x: jaxrf.actual_receptive_field(
        jnp.tanh, x, (0, 0), mode="structural"
    ),
    "support_map": lambda x: jaxrf.support_map(jnp.tanh, x),
    "erf": lambda x: jaxrf.effective_receptive_field(jnp.tanh, x),
    "erf_stream": lambda x: jaxrf.effective_receptive_field(jnp.tanh, [np.ones((1, 16, 16, 1)), x]),
}


@pytest.mark.parametrize("probe", PROBES)
def test_empty_input_is_a_value_error_naming_the_shape(probe):
    with pytest.raises(ValueError, match=r"shape \(0, 16, 16, 1\), with an empty batch axis"):
        PROBES[probe](EMPTY)


def test_empty_spatial_axis_is_named():
    with pytest.raises(ValueError, match=r"shape \(1, 0, 4, 1\), with an empty axis 1"):
        jaxrf.effective_receptive_field(jnp.tanh, np.zeros((1, 0, 4, 1), np.float32))


NONFINITE_CALLS = {
    "gradient_map": lambda v: jaxrf.gradient_map(jnp.sqrt, jnp.ones((1, 5, 1)), (2,), nonfinite=v),
    "actual": lambda v: jaxrf.actual_receptive_field(
        jnp.sqrt, jnp.ones((1, 5, 1)), (2,), nonfinite=v
    ),
    "support_map": lambda v: jaxrf.support_map(
        jnp.sqrt, jnp.ones((1, 5, 1)), mode="measured", nonfinite=v
    ),
    "erf": lambda v: jaxrf.effective_receptive_field(jnp.sqrt, jnp.ones((1, 5, 1)), nonfinite=v),
}


@pytest.mark.parametrize("call", NONFINITE_CALLS)
def test_one_nonfinite_vocabulary(call):
    for value in ("raise", "warn", "skip", "keep"):
        NONFINITE_CALLS[call](value)  # all accepted ("keep": the older name of "skip")
    with pytest.raises(ValueError, match=r"`nonfinite` \(='ignore'\) must be 'warn', 'raise' or"):
        NONFINITE_CALLS[call]("ignore")


def test_skip_leaves_nan_pixels_out_of_the_measured_mask():
    x = jnp.ones((1, 5, 1)).at[0, 1, 0].set(0.0)  # d sqrt/dx = inf at pixel 1
    fn = lambda v: jnp.sqrt(v) + jnp.roll(jnp.sqrt(v), 1, axis=1)  # noqa: E731 -- reads i, i-1
    with pytest.warns(jaxrf.NonFiniteGradientWarning):
        warned = jaxrf.actual_receptive_field(fn, x, (2,), nonfinite="warn")
    assert warned.box == ((2, 2),)  # pixel 1 (inf) is not in the mask; pixel 2 (1/2) is
    assert jaxrf.actual_receptive_field(fn, x, (2,), nonfinite="skip").box == ((2, 2),)


def test_a_stream_that_changes_shape_names_the_batch():
    stream = [jnp.ones((2, 5, 1)), jnp.ones((2, 5, 1)), jnp.ones((1, 6, 1))]
    with pytest.raises(ValueError, match=r"batch 2 of `inputs` has sample shape \(6, 1\), but"):
        jaxrf.effective_receptive_field(lambda x: x, stream, (0,))
