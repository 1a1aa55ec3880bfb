"""Layer taps: the network truncated at named layers, as one function of the input.

A name in :attr:`ReceptiveField.layers` (or :func:`jaxrf.layer_table`) belongs to one equation
of the traced program: the walk records, for each layer, the path of equation indices (through
nested sub-programs such as ``pjit``) whose first output is that layer's feature map.
:func:`intermediate` re-evaluates the same program and returns those feature maps, so probing
``g(x)[k]`` is probing the network cut by hand after layer ``layers[k]``: the same equations on
the same values. Sub-programs on a tapped path are evaluated inline; everything else is bound as
traced (custom derivatives included). Under :func:`jax.jit` the equations that no tapped layer
needs are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from ._jaxpr import bind, interpret
from ._trace import walk_network

_SUBPROGRAM_KEYS = ("jaxpr", "call_jaxpr")


def _subprogram(eqn):
    for key in _SUBPROGRAM_KEYS:
        sub = eqn.params.get(key)
        if sub is not None:
            return (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
    return None


def _run(jaxpr, consts, args, targets: dict, found: dict) -> list:
    """Evaluate ``jaxpr``; ``targets`` maps equation index -> {slot: remaining path}."""
    by_eqn = {id(jaxpr.eqns[i]): (i, sub) for i, sub in targets.items()}

    def rule(eqn, vals):
        if id(eqn) not in by_eqn:
            return bind(eqn, vals)
        _, wanted = by_eqn[id(eqn)]
        here = {slot: rest for slot, rest in wanted.items() if not rest}
        deeper = {slot: rest for slot, rest in wanted.items() if rest}
        if deeper:
            sub = _subprogram(eqn)
            if sub is None:
                names = ", ".join(str(s) for s in deeper)
                raise ValueError(
                    f"layer {names} sits inside primitive '{eqn.primitive.name}', whose "
                    "sub-program jaxrf cannot evaluate inline (only jit/pjit/closed_call/"
                    "custom_jvp/custom_vjp/remat bodies can be tapped); tap a layer outside it."
                )
            outs = _run(sub[0], sub[1], vals, _group(deeper), found)
        else:
            outs = bind(eqn, vals)
        for slot in here:
            found[slot] = outs[0]
        return outs

    return interpret(jaxpr, consts, args, rule)


def _group(paths: dict) -> dict:
    """{slot: path} -> {first index: {slot: rest of path}}."""
    grouped: dict = {}
    for slot, path in paths.items():
        grouped.setdefault(path[0], {})[slot] = path[1:]
    return grouped


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
    closed, walker, _, _ = walk_network(fn, x, spatial_axes, unknown, None)
    missing = [n for n in names if n not in walker.sites]
    if missing or not names:
        raise ValueError(
            f"`layers` (={names!r}) must name layers of `fn`; "
            f"{'unknown: ' + repr(missing) if missing else 'no name given'}. Its layers are "
            f"{list(walker.sites)} (see jaxrf.layer_table(jaxrf.receptive_field(fn, x)))."
        )
    targets = _group({k: walker.sites[n] for k, n in enumerate(names)})

    def g(inp):
        found: dict = {}
        flat_in = jax.tree_util.tree_leaves(inp)
        _run(closed.jaxpr, closed.consts, flat_in, targets, found)
        return tuple(found[k] for k in range(len(names)))

    return g
