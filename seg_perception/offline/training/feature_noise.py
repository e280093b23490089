"""Feature-statistics noise: a training-time regulariser for models that must work on cameras they never saw.

A camera, renderer or lighting change shows up in a network's early feature maps mostly as shifted per-channel
means and spreads (what style-transfer methods swap). During training, with probability ``p`` per batch and per
chosen module, each sample's per-channel mean and standard deviation at that module's output are replaced by
values drawn around them, with the spread those statistics have across the batch as the scale (the "uncertain
feature statistics" idea of DSU, Li et al., ICLR 2022). Forward hooks only: the model's code and its exported
graph are unchanged, evaluation mode is untouched.
"""
import torch

from ...errors import UserError

EPS = 1e-6


def perturb_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> the same features with each sample's channel means and stds redrawn around their
    values (Gaussian, scaled by the batch's spread of each statistic)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    mean_scale = (mean.var(dim=0, keepdim=True) + EPS).sqrt()
    std_scale = (std.var(dim=0, keepdim=True) + EPS).sqrt()
    new_mean = mean + torch.randn_like(mean) * mean_scale
    new_std = std + torch.randn_like(std) * std_scale
    return (x - mean) / std * new_std + new_mean


class FeatureNoise:
    """Hooks :func:`perturb_statistics` onto ``modules`` (names in ``model.named_modules()``) while the model
    trains; unknown names fail loudly. The draws use torch's global generator (seeded per iteration by the
    trainer, so runs stay reproducible)."""

    def __init__(self, model: torch.nn.Module, modules: list[str], p: float):
        named = dict(model.named_modules())
        missing = [name for name in modules if name not in named]
        if missing:
            raise UserError(f'feature_noise_modules: no module {", ".join(missing)} in the model '
                             f'(e.g. {", ".join(n for n in list(named)[1:6])})')
        self.p = float(p)
        self.handles = [named[name].register_forward_hook(self._hook) for name in modules]

    def _hook(self, module, inputs, output):
        if not module.training or output.shape[0] < 2 or float(torch.rand(())) >= self.p:
            return None
        return perturb_statistics(output)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
