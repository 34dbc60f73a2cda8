"""Make a model faster to render through without changing what it computes: batch norm folded into the
preceding convolution (inference-mode BN is an affine map; on the CPU it was about a quarter of a step),
and channels-last weights. Both act on a copy, so the caller's model is left as it was."""
import copy
import dataclasses

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from worker.compute.models import LoadedModel


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv child, batch-norm child) pairs that run back to back: `convK`/`bnK` siblings (open_clip's
    ModifiedResNet stem and bottlenecks) and consecutive children of a Sequential (its downsample)."""
    children = dict(module.named_children())
    pairs = [(name, "bn" + name[4:]) for name, child in children.items()
             if name.startswith("conv") and isinstance(child, nn.Conv2d)
             and isinstance(children.get("bn" + name[4:]), nn.BatchNorm2d)]
    if isinstance(module, nn.Sequential):
        names = list(children)
        pairs += [(a, b) for a, b in zip(names, names[1:], strict=False)
                  if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d)]
    return pairs


def fold_batchnorm(visual: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `visual` (in eval mode) with every conv → batch-norm pair fused; returns it and the count."""
    folded = copy.deepcopy(visual).eval()
    count = 0
    for module in list(folded.modules()):
        for conv, bn in _conv_bn_pairs(module):
            setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
            setattr(module, bn, nn.Identity())
            count += 1
    return folded, count


def _conv_weights(visual: nn.Module) -> list[torch.Tensor]:
    return [p for p in visual.parameters() if p.dim() == 4]


def fast_model(loaded: LoadedModel, channels_last: bool = True) -> LoadedModel:
    """The same model for rendering: batch norm folded, channels-last if it has convolutions. The result
    shares nothing mutable with `loaded`; its `model` holds only the image tower."""
    visual, _ = fold_batchnorm(loaded.visual)
    if channels_last and _conv_weights(visual):
        visual = visual.to(memory_format=torch.channels_last)
    holder = nn.Module()
    holder.visual = visual
    return dataclasses.replace(loaded, model=holder)


def match_layout(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Inputs in the layout of the tower's first convolution (channels-last when its weights are)."""
    weights = _conv_weights(loaded.visual)
    if weights and weights[0].is_contiguous(memory_format=torch.channels_last) and not weights[0].is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
