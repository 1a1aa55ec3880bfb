"""The benchmark's network and its peers: the zoo's torchvision-layout ResNet-50, the RepLKNet
ERF step in JAX, and the same network in PyTorch with the two PyTorch ERF scripts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxrf
import jaxrf.models


def resnet_parts(quick: bool, dtype=jnp.float32):
    """(apply(params, x), variables, layers): ResNet-50 (quick: 1-1-1-1 blocks at width 1/8)."""
    layers = (1, 1, 1, 1) if quick else (3, 4, 6, 3)
    width = 0.125 if quick else 1.0
    entry = jaxrf.models.get("resnet50_torchvision")
    variables = entry.init(jax.random.key(0), (1, 64, 64, 3), layers=layers, width=width)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)

    def apply(params, x):
        return entry.apply(params, x, layers=layers, width=width)

    return apply, variables, layers


def resnet_setup(quick: bool, dtype=jnp.float32):
    """(net, variables, layers): :func:`resnet_parts` with the weights closed over."""
    apply, variables, layers = resnet_parts(quick, dtype)

    def net(x):
        return apply(variables, x)

    return net, variables, layers


def centre(y_shape):
    return tuple(m // 2 for m in y_shape)


def erf_one(net, xi, keep=None):
    """RepLKNet map of one image ``xi`` (H, W, C): d relu(y[centre]).sum() / dx, positive part.

    ``keep``: applied to the pullback (jaxrf's step packs its masks: ``_erf._compact_masks``).
    """
    y, pull = jax.vjp(lambda x: jax.nn.relu(net(x)), xi[None])
    pull = pull if keep is None else keep(pull)
    c = centre(y.shape[1:3])
    seed = jnp.zeros(y.shape[1:3], y.dtype).at[c].set(1)
    (g,) = pull(jnp.broadcast_to(seed[None, :, :, None], y.shape))
    return jnp.maximum(g[0], 0).sum(-1)


def erf_step(net):
    """``jit`` of the summed RepLKNet maps of a batch (the step jaxrf's ERF compiles)."""
    return jax.jit(lambda xb: jax.vmap(lambda xi: erf_one(net, xi))(xb).sum(0))


def torch_model(variables, layers, width: float = 1.0):
    """The same network in PyTorch (NCHW), loaded with ``variables`` (None: PyTorch's init)."""
    import torch
    from torch import nn

    def conv_bn(p, s, cin, cout, k, stride, pad):
        conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        bn = nn.BatchNorm2d(cout, eps=1e-5)
        if p is not None:
            kern = np.asarray(p["conv"]["kernel"], np.float32)  # HWIO -> OIHW
            conv.weight.data = torch.from_numpy(kern.transpose(3, 2, 0, 1).copy())
            for name, src in (("weight", p["bn"]["scale"]), ("bias", p["bn"]["bias"])):
                getattr(bn, name).data = torch.from_numpy(np.asarray(src, np.float32).copy())
            bn.running_mean.data = torch.from_numpy(np.array(s["bn"]["mean"], np.float32))
            bn.running_var.data = torch.from_numpy(np.array(s["bn"]["var"], np.float32))
        return nn.Sequential(conv, bn)

    params = variables["params"] if variables else {}
    stats = variables["batch_stats"] if variables else {}

    class Bottleneck(nn.Module):
        def __init__(self, name, cin, mid, stride):
            super().__init__()
            p, s = params.get(name, {}), stats.get(name, {})
            out = 4 * mid
            self.c1 = conv_bn(p.get("conv1"), s.get("conv1"), cin, mid, 1, 1, 0)
            self.c2 = conv_bn(p.get("conv2"), s.get("conv2"), mid, mid, 3, stride, 1)
            self.c3 = conv_bn(p.get("conv3"), s.get("conv3"), mid, out, 1, 1, 0)
            need = stride != 1 or cin != out
            down = p.get("downsample"), s.get("downsample"), cin, out, 1, stride, 0
            self.down = conv_bn(*down) if need else None

        def forward(self, x):
            y = torch.relu(self.c1(x))
            y = torch.relu(self.c2(y))
            y = self.c3(y)
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            c = int(64 * width)
            self.stem = conv_bn(params.get("conv1"), stats.get("conv1"), 3, c, 7, 2, 3)
            self.pool = nn.MaxPool2d(3, 2, 1)
            blocks, cin = [], c
            for stage, units in enumerate(layers):
                mid = int(64 * width) * 2**stage
                for u in range(units):
                    stride = 2 if (u == 0 and stage > 0) else 1
                    blocks.append(Bottleneck(f"layer{stage + 1}_{u}", cin, mid, stride))
                    cin = 4 * mid
            self.blocks = nn.Sequential(*blocks)

        def forward(self, x):
            return self.blocks(self.pool(torch.relu(self.stem(x))))

    return Net().eval()


def torch_erf_loop(model, images_nchw):
    """The PyTorch script people copy: one image per step, autograd.grad w.r.t. the input."""
    import torch

    acc = None
    for x in images_nchw:
        x = x[None].clone().requires_grad_(True)
        y = model(x)
        h, w = y.shape[2] // 2, y.shape[3] // 2
        (g,) = torch.autograd.grad(torch.relu(y[:, :, h, w]).sum(), x)
        m = torch.relu(g).sum((0, 1))
        acc = m if acc is None else acc + m
    return acc


def torch_erf_batched(model, images_nchw, batch: int = 8):
    """Batches of ``batch`` with one backward of the summed units: in eval mode (no batch
    statistics) each sample's input gradient is its own, so the maps equal the loop's."""
    import torch

    acc = None
    for start in range(0, len(images_nchw), batch):
        x = images_nchw[start : start + batch].clone().requires_grad_(True)
        y = model(x)
        h, w = y.shape[2] // 2, y.shape[3] // 2
        (g,) = torch.autograd.grad(torch.relu(y[:, :, h, w]).sum(), x)
        m = torch.relu(g).sum((0, 1))
        acc = m if acc is None else acc + m
    return acc
