"""Make a model's graph static for one input size before export.

TF-style 'same' padding (timm's `Conv2dSame`, used by the `tf_` EfficientNets) computes its pad
amounts from the input shape on every call, which leaves Shape/Ceil/Sub arithmetic in the ONNX
graph. Quantizers and converters mishandle it (ORT static quantization turned the 10x10 grid into
9x9). At a fixed export size the pads are constants, so each such conv becomes a constant pad + a
plain convolution: same numbers, a static graph.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class StaticSamePadConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, pads: list[int]):
        super().__init__()
        self.conv, self.pads = conv, [int(p) for p in pads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.conv.weight, self.conv.bias, self.conv.stride, 0,
                        self.conv.dilation, self.conv.groups)


def freeze_same_padding(model: nn.Module, input_size: int) -> nn.Module:
    """A copy of `model` with every dynamic 'same'-padding conv replaced for `input_size` inputs."""
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    model = copy.deepcopy(model).eval()
    seen: dict[str, list[int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, Conv2dSame):
            def record(mod, args, name=name):
                seen[name] = pad_same_arg(list(args[0].shape[-2:]), list(mod.weight.shape[-2:]), mod.stride,
                                          mod.dilation)
            hooks.append(module.register_forward_pre_hook(record))
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    for hook in hooks:
        hook.remove()
    for name, pads in seen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, StaticSamePadConv(getattr(parent, child), pads))
    return model
