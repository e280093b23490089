"""Safe reading of official checkpoints: torch files with weights_only=True, Paddle .pdparams through a
restricted unpickler that admits only numpy arrays and plain containers (no Paddle needed); the keys of our own
trainer's checkpoints."""
import codecs
import collections
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

# what describes the network in a checkpoint of our trainer (beside its 'model' state dict), as `train` writes it
# and `export`, `recover` and `average` read or write it
CHECKPOINT_INFO_KEYS = ('arch', 'num_classes', 'classes', 'palette', 'mean', 'std', 'input_size', 'resize_mode',
                        'white_balance')

_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('_codecs', 'encode'): codecs.encode,  # protocol-2 pickles store array bytes through it
    ('numpy', 'dtype'): np.dtype,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy.core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy._core.multiarray', 'scalar'): _multiarray.scalar,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f'refusing to load {module}.{name} from a .pdparams file (only numpy arrays and containers '
                'are allowed)') from None


def torch_load_weights(path: str | os.PathLike, what: str = 'seg_perception checkpoint') -> object:
    """``torch.load(path, weights_only=True)`` on CPU. A missing path raises FileNotFoundError; a file torch
    cannot read that way (not a torch file, or one holding arbitrary objects) raises UserError
    "PATH: not a WHAT". Never falls back to unrestricted unpickling."""
    import stat

    from ..errors import UserError
    path = str(path)
    mode = os.stat(path).st_mode  # FileNotFoundError names the path
    if not stat.S_ISREG(mode):
        raise UserError(f'{path}: not a {what} (not a regular file)')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)  # pickle-protocol notes on non-torch pickles
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, KeyError, RuntimeError, ... for foreign files
        kind = ('it holds objects other than tensors and plain containers'
                if isinstance(exc, pickle.UnpicklingError) else 'torch cannot read it')
        raise UserError(f'{path}: not a {what} ({kind})') from None


def read_pdparams(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a PaddlePaddle ``.pdparams`` file (a pickled dict of numpy arrays) without Paddle."""
    with open(path, 'rb') as f:
        obj = _RestrictedUnpickler(f, encoding='latin1').load()
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: expected a dict of arrays, got {type(obj).__name__}')
    obj.pop('StructuredToParameterName@@', None)  # Paddle's name table, not a tensor
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in obj.items()}


def read_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Return a flat {key: tensor} dict from an mmseg ``.pth`` (``{'state_dict': ...}`` or bare) or a
    ``.pdparams`` file."""
    path = str(path)
    if path.endswith('.pdparams'):
        return read_pdparams(path)
    obj = torch_load_weights(path, 'torch checkpoint')
    for wrapper in ('state_dict', 'model'):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: no state dict found')
    return dict(obj)


def load_official_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an official checkpoint file unchanged into ``model``.

    The model's ``checkpoint_filter_fn`` maps official names to ours (and raises on official keys it cannot
    map); any of our parameters or buffers left unfilled, or a shape mismatch, is an error naming the keys."""
    state = read_checkpoint_file(path)
    mapped = model.checkpoint_filter_fn(state)
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        raise KeyError(f'{path}: checkpoint does not match {type(model).__name__}: '
                       f'missing {missing[:20]}{" ..." if len(missing) > 20 else ""} '
                       f'unexpected {unexpected[:20]}{" ..." if len(unexpected) > 20 else ""}')
    bad = [f'{k}: {tuple(mapped[k].shape)} vs ours {tuple(v.shape)}' for k, v in own.items()
           if tuple(mapped[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f'{path}: shape mismatch: ' + '; '.join(bad[:20]))
    model.load_state_dict({k: mapped[k].to(own[k].dtype) for k in own}, strict=True)
    return model
