"""One traversal of a jaxpr, nested sub-programs included.

Every part of jaxrf that reads a traced network (the analytic walk, layout detection, the
structural surrogate, the CPU lowering) calls :func:`walk` with its own ``visit``: the walker
owns the environment of variables, literals and constants, and enters the single-sub-program
containers listed in the registry (``jit``, ``pjit``, ``closed_call``, ``custom_jvp_call``,
``remat``...) when ``descend`` says so; every other equation goes to ``visit``.

Each equation is visited at a :class:`Site`: its ``path`` of equation indices through the
nested sub-programs (``(3, 0, 5)``: equation 5 of sub-program 0 of equation 3 of the top
level), and the name stacks of the enclosing containers, from which layer names are made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jax._src import source_info_util
from jax.extend import core as jcore


@dataclass(frozen=True)
class Site:
    """Where an equation sits: equation indices (and sub-program indices) from the top level."""

    path: tuple[int, ...] = ()
    prefix: tuple[str, ...] = ()
    callers: tuple = ()  # the enclosing container equations, outermost first

    def at(self, index: int) -> Site:
        return Site(self.path + (index,), self.prefix, self.callers)

    def inside(self, eqn, sub_index: int = 0) -> Site:
        """The site of sub-program ``sub_index`` of the container equation at this site."""
        return Site(
            self.path + (sub_index,),
            self.prefix + (str(eqn.source_info.name_stack),),
            self.callers + (eqn,),
        )


def _user_line(eqn) -> str:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 -- a location is a courtesy, never a failure
        return ""


def locate(eqn, site: Site | None = None) -> str:
    """Where in the user's code ``eqn`` was traced from, for error messages.

    The user's line when the traceback has one; for an equation inside library code (e.g.
    ``jnp.sort``, itself a ``jit``), the user's line of the innermost enclosing call that has
    one, naming the library function; else the name stack or "an unknown location"."""
    line = _user_line(eqn)
    if line:
        return line
    for outer in reversed(site.callers if site is not None else ()):
        line = _user_line(outer)
        if line:
            fn = outer.params.get("name", outer.primitive.name)
            return f"{line}, inside library code (the call to '{fn}')"
    stack = str(eqn.source_info.name_stack)
    where = f"name stack '{stack}'" if stack else "an unknown location"
    return f"{where}, inside library code"


ROOT = Site()


def open_program(program) -> tuple:
    """``(jaxpr, consts)`` of a ``ClosedJaxpr`` or an open ``Jaxpr`` (no constants)."""
    if isinstance(program, jcore.ClosedJaxpr):
        return program.jaxpr, list(program.consts)
    return program, []


def sub_program(eqn):
    """The sub-program of a single-sub-program container equation, else None."""
    from ._registry import REGISTRY  # the registry imports the modules that import this one

    entry = REGISTRY.get(eqn.primitive.name)
    key = entry.container if entry is not None else None
    return eqn.params.get(key) if isinstance(key, str) else None


def _same(value):
    return value


def _always(eqn, vals, site) -> bool:
    return True


Visit = Callable[..., Sequence]


def walk(
    program,
    args: Sequence,
    visit: Visit,
    *,
    wrap: Callable = _same,
    descend: Callable = _always,
    site: Site = ROOT,
) -> list:
    """Evaluate ``program`` on ``args`` with ``visit(eqn, vals, site) -> outputs`` per equation.

    Args:
        program: a ``ClosedJaxpr`` or an open ``Jaxpr``.
        args: one value per input variable.
        visit: the per-equation function; it gets the values of the equation's inputs.
        wrap: applied to every constant and literal before a visit reads it.
        descend: ``descend(eqn, vals, site)``: whether to enter a single-sub-program
            container instead of visiting it whole.
        site: the site of ``program`` itself (for nested calls).

    Returns:
        One value per output variable.
    """
    jaxpr, consts = open_program(program)
    env: dict = dict(zip(jaxpr.constvars, map(wrap, consts), strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))

    def read(v):
        return wrap(v.val) if isinstance(v, jcore.Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
        vals = [read(v) for v in eqn.invars]
        here = site.at(i)
        sub = sub_program(eqn)
        if sub is not None and descend(eqn, vals, here):
            outs = walk(sub, vals, visit, wrap=wrap, descend=descend, site=here.inside(eqn))
        else:
            outs = visit(eqn, vals, here)
        for var, out in zip(eqn.outvars, outs, strict=True):
            if not isinstance(var, jcore.DropVar):
                env[var] = out
    return [read(v) for v in jaxpr.outvars]


def bind(eqn, vals) -> list:
    """The equation's own primitive applied to ``vals`` (a list of outputs)."""
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*vals, **params)
    return list(outs) if eqn.primitive.multiple_results else [outs]
