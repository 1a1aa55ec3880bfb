"""Module paths of Flax NNX layers, for the per-layer records.

Flax linen and Haiku put each module's name on JAX's name stack while tracing; Flax NNX does
not. :func:`nnx_names` finds the NNX modules ``fn`` uses (``fn`` itself, the object of a bound
method, the variables it closes over, the globals it names) and, while ``fn`` is traced, runs
every submodule's ``__call__`` under the name stack ``path`` of that submodule in the graph
(``blocks.0.conv1``: attribute names and list indices joined by dots). Nothing changes when
Flax is not installed or ``fn`` uses no NNX module.
"""

from __future__ import annotations

import contextlib
import functools

from jax._src import source_info_util


def _candidates(fn) -> list:
    out = [fn, getattr(fn, "__self__", None)]
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            out.append(cell.cell_contents)
    code = getattr(fn, "__code__", None)
    if code is not None:
        out += [getattr(fn, "__globals__", {}).get(n) for n in code.co_names]
    return out


def _paths(fn) -> dict[int, tuple[object, str]]:
    """``id(module) -> (module, dotted path)`` for every NNX submodule ``fn`` reaches."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is optional
        return {}
    found: dict[int, tuple[object, str]] = {}
    for root in _candidates(fn):
        if not isinstance(root, nnx.Module):
            continue
        for path, node in nnx.iter_graph(root):
            if path and isinstance(node, nnx.Module):
                found.setdefault(id(node), (node, ".".join(map(str, path))))
    return found


def _scoped(call, paths):
    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        entry = paths.get(id(self))
        if entry is None:
            return call(self, *args, **kwargs)
        stack = source_info_util.new_name_stack(entry[1])
        with source_info_util.set_name_stack(stack):
            return call(self, *args, **kwargs)

    return wrapper


@contextlib.contextmanager
def nnx_names(fn):
    """While active, NNX submodules reached from ``fn`` trace under their module paths."""
    paths = _paths(fn)
    classes = {type(m) for m, _ in paths.values()}
    saved = {cls: cls.__dict__.get("__call__") for cls in classes}
    try:
        for cls in classes:
            cls.__call__ = _scoped(cls.__call__, paths)
        yield
    finally:
        for cls, own in saved.items():
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own
