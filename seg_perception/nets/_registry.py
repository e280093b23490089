"""A plain dict of model constructors, filled by ``@register_model``."""
import difflib
from collections.abc import Callable

import torch.nn as nn

from ..errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a constructor ``fn(num_classes=..., **kw) -> nn.Module`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f'model {fn.__name__!r} registered twice')
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 150, **kwargs) -> nn.Module:
    """A fresh model ``name`` (a name from :func:`list_models`) with ``num_classes`` outputs; ``kwargs`` go to
    its constructor. An unknown name is a UserError (a ValueError) listing the known ones."""
    try:
        fn = _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list_models(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ''
        raise UserError(f'unknown model {name!r}; {hint}known: {", ".join(list_models())}') from None
    return fn(num_classes=num_classes, **kwargs)
