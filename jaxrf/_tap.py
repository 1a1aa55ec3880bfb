"""Layer taps: the network truncated at named layers, as one function of the input.

A name in :attr:`ReceptiveField.layers` (or :func:`jaxrf.layer_table`) belongs to one equation
of the traced program: each :class:`~jaxrf.LayerRecord` carries its ``source``, the path of
equation indices (through nested sub-programs such as ``pjit``) and the output of that equation
which is the layer's feature map.
:func:`intermediate` re-evaluates the same program and returns those feature maps, so probing
``g(x)[k]`` is probing the network cut by hand after layer ``layers[k]``: the same equations on
the same values. Sub-programs on a tapped path are evaluated inline; everything else is bound as
traced (custom derivatives included). Under :func:`jax.jit` the equations that no tapped layer
needs are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from ._trace import receptive_field, trace
from ._walk import bind, sub_program, walk


def _check_inline(closed, name: str, path: tuple[int, ...]) -> None:
    """Raise if the layer at ``path`` sits inside a sub-program the walker does not enter."""
    jaxpr = closed.jaxpr
    for depth in range(0, len(path) - 1, 2):
        eqn = jaxpr.eqns[path[depth]]
        sub = sub_program(eqn)
        if sub is None:
            raise ValueError(
                f"layer {name!r} sits inside primitive '{eqn.primitive.name}', whose "
                "sub-program jaxrf cannot evaluate inline (only jit/pjit/closed_call/"
                "custom_jvp/custom_vjp/remat bodies can be tapped); tap a layer outside it."
            )
        jaxpr = getattr(sub, "jaxpr", sub)


def intermediate(
    fn: Callable, x, layers: Sequence[str], *, spatial_axes=None, unknown: str = "raise"
) -> Callable:
    """``g(x) -> tuple`` of the feature maps of ``layers`` (names from ``rf.layers``).

    Args:
        fn: the network, a function of one array (as for :func:`jaxrf.receptive_field`).
        x: an example input or :class:`jax.ShapeDtypeStruct` fixing the traced shapes.
        layers: layer names, each as in ``[r.name for r in jaxrf.receptive_field(fn, x).layers]``.
        spatial_axes, unknown: as for :func:`jaxrf.receptive_field`.

    Returns:
        A function of an input shaped like ``x`` returning one array per name, in order.

    Raises:
        ValueError: a name that is not a layer of ``fn`` (the message lists the layers), or a
            layer inside a sub-program that cannot be evaluated inline (``cond``, ``scan``).

    Example:
        >>> import jax, jax.numpy as jnp, jaxrf
        >>> from jaxrf._tap import intermediate
        >>> dn = ("NHWC", "HWIO", "NHWC")
        >>> conv = lambda x: jax.lax.conv_general_dilated(
        ...     x, jnp.ones((3, 3, 1, 1)), (1, 1), "VALID", dimension_numbers=dn)
        >>> net, x = lambda x: conv(conv(x)), jnp.ones((1, 8, 8, 1))
        >>> [r.name for r in jaxrf.receptive_field(net, x).layers]
        ['conv0', 'conv1']
        >>> (first,) = intermediate(net, x, ["conv0"])(x)
        >>> first.shape, float(first[0, 0, 0, 0])
        ((1, 6, 6, 1), 9.0)
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    closed = trace(fn, x)
    rf = receptive_field(closed, spatial_axes=spatial_axes, unknown=unknown)
    sources = {r.name: r.source for r in rf.layers if r.source is not None}
    missing = [n for n in names if n not in sources]
    if missing or not names:
        raise ValueError(
            f"`layers` (={names!r}) must name layers of `fn`; "
            f"{'unknown: ' + repr(missing) if missing else 'no name given'}. Its layers are "
            f"{list(sources)} (see jaxrf.layer_table(jaxrf.receptive_field(fn, x)))."
        )
    for n in names:
        _check_inline(closed, n, sources[n][0])
    wanted = {sources[n]: k for k, n in enumerate(names)}  # (path, output) -> slot
    on_path = {sources[n][0][:d] for n in names for d in range(1, len(sources[n][0]), 2)}

    def g(inp):
        found: dict = {}

        def visit(eqn, vals, site):
            outs = bind(eqn, vals)
            for out, val in enumerate(outs):
                if (site.path, out) in wanted:
                    found[wanted[site.path, out]] = val
            return outs

        def descend(eqn, vals, site) -> bool:
            return site.path in on_path

        walk(closed, jax.tree_util.tree_leaves(inp), visit, descend=descend)
        return tuple(found[wanted[sources[n]]] for n in names)

    return g
