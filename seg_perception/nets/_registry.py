"""A plain dict of model constructors, filled by ``@register_model``."""
_MODELS = {}


def register_model(fn):
    """Register a constructor ``fn(num_classes=..., **kw) -> nn.Module`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f'model {fn.__name__!r} registered twice')
    _MODELS[fn.__name__] = fn
    return fn


def list_models():
    return sorted(_MODELS)


def create_model(name, num_classes=150, **kwargs):
    try:
        fn = _MODELS[name]
    except KeyError:
        raise ValueError(f'unknown model {name!r}; known: {", ".join(list_models())}') from None
    return fn(num_classes=num_classes, **kwargs)
