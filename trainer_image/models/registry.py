"""Models by name, so the trainer never imports a model class.

A model is any ``nn.Module`` that keeps the :class:`PanopticModel` contract;
``@register_model("name")`` adds it, and a checkpoint that stores the name and
``model.config`` rebuilds it with ``build_model(name, **config)`` (the config
carries the categories). Another model, say a Panoptic FPN for GPU images,
is one new module with one decorator; the trainer does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from trainer_image.models.postprocess import PanopticPrediction


@runtime_checkable
class PanopticModel(Protocol):
    """What the trainer relies on (README.md, "Add a model")."""

    model_name: str
    loss_names: tuple[str, ...]
    config: dict[str, Any]

    def target_builder(self) -> Callable[..., dict[str, Any]]:
        """The loader's per-sample ``target_builder`` for this model's losses."""
        ...

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named, unweighted, non-negative scalar losses."""
        ...

    def loss_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The head parameters each loss trains (they get lr / lambda_i)."""
        ...

    def predict(self, images: torch.Tensor) -> list[PanopticPrediction]:
        """Batched panoptic output on the model's device."""
        ...


MODELS: dict[str, type] = {}

ModelClass = TypeVar("ModelClass", bound=type)


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator: make the model buildable as ``name``."""

    def decorate(cls: ModelClass) -> ModelClass:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {MODELS[name]}")
        MODELS[name] = cls
        cls.model_name = name
        return cls

    return decorate


def category_dict(category: Any) -> dict[str, Any]:
    """A category (the data reader's ``Category`` or a JSON dict) as the
    JSON-able dict that model configs and checkpoints carry."""

    def field(name: str, default: Any = ...) -> Any:
        if isinstance(category, Mapping):
            return category[name] if default is ... else category.get(name, default)
        return getattr(category, name) if default is ... else getattr(category, name, default)

    try:
        color = field("color", None)
        return {
            "id": int(field("id")),
            "name": str(field("name")),
            "isthing": bool(field("isthing")),
            "color": [int(c) for c in color] if color is not None else None,
        }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"a category needs id, name and isthing; got {category!r} ({exc})"
        ) from None


def category_dicts(categories: Sequence[Any]) -> list[dict[str, Any]]:
    """Categories in id order, the order of ``PanopticSplit.category_index``:
    contiguous class i of a model is the i-th of these."""
    dicts = sorted((category_dict(c) for c in categories), key=lambda c: c["id"])
    ids = [c["id"] for c in dicts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"category ids must be unique, got {ids}")
    return dicts


def register_categories(model: nn.Module, categories: Sequence[Any]) -> list[dict[str, Any]]:
    """Give ``model`` its categories (as :func:`category_dicts`) and the two tensors every
    model's inference reads: which classes are things, and each class's category id.
    The tensors derive from the config, so they stay out of ``state_dict`` (a checkpoint
    holds learned state only)."""
    cats = category_dicts(categories)
    if not cats:
        raise ValueError(f"{type(model).__name__} needs at least one category")
    model.categories = cats
    model.register_buffer(
        "thing_classes", torch.tensor([c["isthing"] for c in cats]), persistent=False
    )
    model.register_buffer("category_ids", torch.tensor([c["id"] for c in cats]), persistent=False)
    return cats


def batch_to_device(
    batch: Mapping[str, torch.Tensor],
    needed: Sequence[str],
    device: torch.device,
    optional: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """The model's inputs from a loader batch, on ``device``: every ``needed`` key (a
    KeyError names the missing ones and how to get them) and the ``optional`` keys present.
    Every model reads its batch through this, so a loader built without the model's
    ``target_builder()`` fails the same clear way whichever model it feeds."""
    missing = [k for k in needed if k not in batch]
    if missing:
        raise KeyError(
            f"batch lacks {missing}; build the loader with target_builder=model.target_builder()"
        )
    keys = [*needed, *(k for k in optional if k in batch)]
    return {k: batch[k].to(device, non_blocking=True) for k in keys}


def preset_config(
    model: str,
    presets: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, Any],
    preset: str,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """A model's settings: its defaults, then the preset's, then the overrides; an unknown
    preset or key is a ValueError naming the model (a typo must not be silently ignored)."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(presets)}")
    unknown = set(overrides) - set(presets[preset]) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {model} config keys: {sorted(unknown)}")
    return {**defaults, **presets[preset], **overrides}


def build_model(name: str, categories: Sequence[Any], **config: Any) -> PanopticModel:
    """Build the registered model ``name`` for ``categories`` with its ``config``.

    Contiguous class i is the i-th category in id order, as in
    ``PanopticSplit.category_index``.
    """
    cls = model_class(name)
    if not categories:
        raise ValueError(f"model {name!r} needs at least one category")
    return cls(categories, **config)


def model_class(name: str) -> ModelClass:
    """The class registered as ``name``, or an error that lists the registered names."""
    if name not in MODELS:
        known = ", ".join(sorted(MODELS)) or "none"
        raise ValueError(f"unknown model {name!r}; registered models: {known}")
    return MODELS[name]


def model_loss_names(name: str, config: Mapping[str, Any] | None = None) -> list[str]:
    """The loss names of model ``name`` with ``config`` (a preset and overrides), in its
    order, without building it: what a controller run for the model is created with. A class
    whose names depend on its config (the mask transformer's depth) says so with a
    ``config_loss_names`` classmethod; the others have one fixed ``loss_names``."""
    cls = model_class(name)
    by_config = getattr(cls, "config_loss_names", None)
    if callable(by_config):
        return list(by_config(**dict(config or {})))
    return list(cls.loss_names)
