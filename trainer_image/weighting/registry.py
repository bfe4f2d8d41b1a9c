"""Strategies by name, as ``adaseg train --strategy NAME`` picks them.

A strategy module registers a *builder* (``model, weights -> strategy``) with
``@register_strategy("name")``; builders get the model because some strategies
read it (its loss names, its published weights, its last shared layer), and
``weights`` carries ``--weights`` for the strategies that take a vector.
Importing ``trainer_image.weighting`` registers the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from trainer_image.weighting.base import WeightingStrategy

StrategyBuilder = Callable[[nn.Module, Mapping[str, float] | None], WeightingStrategy]

_BUILDERS: dict[str, StrategyBuilder] = {}


def register_strategy(name: str) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Decorator: make ``builder`` the strategy ``name``."""

    def decorate(builder: StrategyBuilder) -> StrategyBuilder:
        if name in _BUILDERS:
            raise ValueError(f"weighting strategy {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return decorate


def strategy_names() -> tuple[str, ...]:
    """Every registered name, in registration order (the order ``--help`` lists them)."""
    return tuple(_BUILDERS)


def build_strategy(
    name: str, model: nn.Module, weights: Mapping[str, float] | None = None
) -> WeightingStrategy:
    """The strategy ``name`` for ``model``'s losses; ``ValueError`` names what is wrong."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown strategy {name!r}; expected one of {strategy_names()}")
    return builder(model, weights)
