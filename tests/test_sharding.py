"""ERF with the batch sharded over 4 forced host devices equals the single-device result.

XLA_FLAGS must be set before jax initialises, so the check runs in a fresh subprocess.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import jaxrf
    assert len(jax.devices()) == 4, jax.devices()
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 3)))
    def fn(x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(10, 8, 8, 2)))
    # 10 samples, batches of 6 and 4: the first is padded to 8 on 4 devices.
    sharded = jaxrf.effective_receptive_field(fn, x, (3, 4), batch_size=6)
    single = jaxrf.effective_receptive_field(fn, x, (3, 4), batch_size=6,
                                             devices=jax.devices()[:1])
    assert sharded.count == single.count == 10
    np.testing.assert_allclose(sharded.map, single.map, rtol=1e-12, atol=1e-15)
    assert sharded.map[0, 0] == 0 and sharded.map[3, 4] > 0
    print("OK")
    """
)


@pytest.mark.slow  # 5 s; CI runs the slow set after the default run
def test_erf_on_four_forced_host_devices_equals_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")
