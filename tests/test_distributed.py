"""ERF under ``jax.distributed``: two local CPU processes, each with its share of the inputs.

Each process calls ``jax.distributed.initialize`` (coordinator on a free loopback port, CPU
collectives over gloo, the default of jax's ``jax_cpu_collectives_implementation``), then
:func:`jaxrf.effective_receptive_field` on its own half of the samples, as the module docstring of
``jaxrf._erf`` documents. Both processes must return the same global map, equal to the mean over
all samples derived by hand below (numpy, float64).

``jax.distributed`` and ``XLA_FLAGS`` must be set up before jax initialises, so the processes are
fresh subprocesses; they are killed after a deadline, and the test fails with their stderr.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

WORKER = textwrap.dedent(
    """
    import sys
    import jax
    import jax.numpy as jnp
    import numpy as np

    pid, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_enable_x64", True)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        coordinator_bind_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=pid,
        initialization_timeout=60,
        heartbeat_timeout_seconds=20,
        shutdown_timeout_seconds=20,
    )
    import jaxrf

    assert jax.process_count() == 2 and jax.process_index() == pid
    local = jax.local_device_count()
    assert jax.device_count() == 2 * local, jax.devices()

    # Case "tanh": a 3x3 SAME conv (2 -> 3 channels) and tanh; 12 samples, 6 per process in
    # batches of 4 and 2 (both padded to a multiple of the global device count).
    w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 3)))

    def tanh_net(x):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(y)

    x = np.random.default_rng(1).normal(size=(12, 8, 8, 2))
    mine = x[6 * pid : 6 * (pid + 1)]
    tanh_erf = jaxrf.effective_receptive_field(tanh_net, mine, (3, 4), batch_size=4)

    # Case "ones": two 3-tap all-ones convs with params from init_fn (replicated on the global
    # mesh), two weight draws; 3 samples per process (one batch, padded).
    conv = lambda k, x: jax.lax.conv_general_dilated(
        x, k, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
    ones_erf = jaxrf.effective_receptive_field(
        lambda k, x: conv(k, conv(k, x)),
        np.full((3, 7, 1), float(pid + 1)),
        init_fn=lambda key: jnp.ones((3, 1, 1)),
        num_draws=2,
    )
    np.savez(out, tanh_map=tanh_erf.map, tanh_count=tanh_erf.count,
             ones_map=ones_erf.map, ones_count=ones_erf.count)
    jax.distributed.shutdown()
    print("OK", flush=True)
    """
)

TIMEOUT_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hand_tanh_erf(x, w, index):
    """Mean over samples of sum_k |d tanh(y)[index, :] . 1 / d x[..., k]|, by hand.

    ``y[i, j, c] = sum_{di, dj, k} x[i + di - 1, j + dj - 1, k] w[di, dj, k, c]`` (SAME, stride
    1, no kernel flip), so ``d/dx[i + di - 1, j + dj - 1, k] = sum_c (1 - tanh(y_c)^2)
    w[di, dj, k, c]`` at ``(i, j) = index``; zero elsewhere. ``index`` is away from the border.
    """
    i, j = index
    maps = []
    for xs in x:
        patch = xs[i - 1 : i + 2, j - 1 : j + 2, :]  # (3, 3, k)
        y = np.einsum("abk,abkc->c", patch, w)
        g = np.einsum("c,abkc->abk", 1 - np.tanh(y) ** 2, w)
        m = np.zeros(xs.shape[:2])
        m[i - 1 : i + 2, j - 1 : j + 2] = np.abs(g).sum(axis=-1)
        maps.append(m)
    return np.mean(maps, axis=0)


@pytest.mark.parametrize("devices_per_process", [1, 2], ids=["1dev", "2dev"])
def test_erf_two_processes_equal_the_global_map(tmp_path, devices_per_process):
    port = free_port()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
    )
    logs = [(tmp_path / f"p{pid}.out", tmp_path / f"p{pid}.err") for pid in range(2)]
    procs = []
    for pid, (out, err) in enumerate(logs):
        with open(out, "w") as o, open(err, "w") as e:
            args = [
                sys.executable,
                "-c",
                WORKER,
                str(pid),
                str(port),
                str(tmp_path / f"p{pid}.npz"),
            ]
            procs.append(subprocess.Popen(args, env=env, stdout=o, stderr=e, text=True))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # A process that fails leaves the other waiting in a collective: stop at the first failure.
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.1)
        failed = any(p.poll() not in (None, 0) for p in procs)
        timed_out = not failed and any(p.poll() is None for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    report = "\n".join(
        f"--- process {pid} (exit {p.returncode}) stderr ---\n{err.read_text()[-3000:]}"
        for pid, (p, (_, err)) in enumerate(zip(procs, logs, strict=True))
    )
    if timed_out:
        pytest.fail(f"two-process ERF did not finish within {TIMEOUT_S} s\n{report}")
    for p, (out, _) in zip(procs, logs, strict=True):
        assert p.returncode == 0 and out.read_text().strip().endswith("OK"), report

    got = []
    for pid in range(2):
        with np.load(tmp_path / f"p{pid}.npz") as f:
            got.append(dict(f))
    # Both processes hold the same replicated all-reduce result.
    for name in ("tanh_map", "tanh_count", "ones_map", "ones_count"):
        np.testing.assert_array_equal(got[0][name], got[1][name], err_msg=name)

    w = np.random.default_rng(0).normal(size=(3, 3, 2, 3))
    x = np.random.default_rng(1).normal(size=(12, 8, 8, 2))
    assert int(got[0]["tanh_count"]) == 12
    np.testing.assert_allclose(got[0]["tanh_map"], hand_tanh_erf(x, w, (3, 4)), rtol=1e-12)

    # Two 3-tap all-ones convs, centre output of 7 -> 3: the input gradient is the number of
    # paths from each input to the centre, [0, 1, 2, 3, 2, 1, 0], for every sample and draw.
    assert int(got[0]["ones_count"]) == 2 * (3 + 3)
    np.testing.assert_array_equal(got[0]["ones_map"], [0, 1, 2, 3, 2, 1, 0])
