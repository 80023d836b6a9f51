"""Who may enter the leaderboard: an agent of the registry by name, or any :class:`~agents.base.SearchAgent` written
outside the package, given as an import path ``module:attr`` on the command line, or as an object or factory by
a program. ``attr`` is a ``SearchAgent`` subclass (built with no arguments), a zero-argument factory returning a
``SearchAgent``, or a ``SearchAgent`` instance (copied for every run). See ``SUBMITTING.md`` beside this file.
"""

from __future__ import annotations

import copy
import importlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.base import SearchAgent

__all__ = ["Entrant", "resolve_entrant"]



@dataclass(frozen=True)
class Entrant:
    """An agent of a leaderboard run.

    :param name: the agent's name (its rows' ``agent``)
    :param source: ``"module:attr"`` of an agent from outside the package (``None``: the registry's, or ``factory``)
    :param factory: a :class:`~agents.base.SearchAgent` (copied per run) or a zero-argument factory of one
    """

    name: str
    source: str | None = None
    factory: Any = None

    @property
    def custom(self) -> bool:
        """Whether the agent comes from outside the registry (it is then passed to ``run_search(agent=...)``)."""
        return self.source is not None or self.factory is not None

    def build(self) -> SearchAgent:
        """A fresh agent of a custom entrant, not set up yet."""
        if not self.custom:
            raise ValueError(f"{self.name!r} is an agent of the registry: ajpq search builds it")
        agent = _instantiate(self.factory if self.factory is not None else _import(self.source), self.label())
        if agent.name != self.name:
            raise ValueError(f"{self.label()} made an agent named {agent.name!r}, earlier {self.name!r}: keep one name")
        return agent

    def label(self) -> str:
        return self.source or (f"the agent object {self.name!r}" if self.factory is not None else self.name)


def _import(path: str | None) -> Any:
    module_name, _, attr = (path or "").partition(":")
    if not module_name or not attr:
        raise ValueError(f"an agent from outside the package is given as 'module:attr', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import the agent {path!r}: {err} (is its module on PYTHONPATH?)") from None
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ValueError(f"cannot import the agent {path!r}: module {module_name!r} has no {attr!r}") from None
    return obj


def _instantiate(obj: Any, label: str) -> SearchAgent:
    from agents.base import SearchAgent

    if isinstance(obj, SearchAgent):
        if obj.env is not None:
            raise ValueError(f"{label}: the agent object was already set up on an env; give a fresh one")
        return copy.deepcopy(obj)
    if not callable(obj):
        raise ValueError(f"{label} is a {type(obj).__name__}, not a SearchAgent, SearchAgent class or factory")
    try:
        agent = obj()
    except TypeError as err:
        raise ValueError(f"{label}: cannot build the agent with no arguments ({err})") from None
    if not isinstance(agent, SearchAgent):
        raise ValueError(f"{label} returned a {type(agent).__name__}, not a SearchAgent")
    return agent


def resolve_entrant(spec: str | SearchAgent | Callable[[], SearchAgent], *, picklable: bool = False) -> Entrant:
    """The :class:`Entrant` of ``spec``: a registry name (or alias), ``"module:attr"``, a ``SearchAgent`` or a
    zero-argument factory; a custom agent is built once here to learn its name, which may not be a registry name.

    :param picklable: the entrant must travel to worker processes or Ray: refuse one that pickle cannot send
    :raises ValueError: an unknown name, an import that fails, an object that is not an agent, a name taken
    """
    from agents.registry import ALIASES, agent_names

    if isinstance(spec, str) and ":" not in spec:
        name = ALIASES.get(spec, spec)
        if name not in agent_names():
            raise ValueError(f"unknown agent {spec!r}; valid names: {', '.join(agent_names())}, or module:attr of "
                             "a SearchAgent written outside the package")
        return Entrant(name)
    if isinstance(spec, str):
        agent = _instantiate(_import(spec), spec)
        entrant = Entrant(agent.name, source=spec)
    else:
        agent = _instantiate(spec, f"the agent {spec!r}")
        entrant = Entrant(agent.name, factory=spec)
    if not isinstance(agent.name, str) or not agent.name or "/" in agent.name:
        raise ValueError(f"{entrant.label()}: an agent's name must be a non-empty string without '/', got {agent.name!r}")
    if agent.name in agent_names() or agent.name in ALIASES:
        raise ValueError(f"{entrant.label()} is named {agent.name!r}, a name of the registry: give it another name")
    if picklable and entrant.factory is not None:
        try:
            pickle.dumps(entrant)
        except Exception as err:  # noqa: BLE001 (pickle raises many types)
            raise ValueError(f"{entrant.label()} cannot be sent to worker processes ({type(err).__name__}: {err}); "
                             "give it as 'module:attr' or run with --workers 1 and without --ray") from None
    return entrant
