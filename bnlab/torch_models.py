"""The article's networks in PyTorch, for `bnlab bench` only (the peer a user would
pick instead of bnlab). Imported only when torch is installed."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def norm_layer(norm: str, channels: int, groups: int = 8) -> nn.Module:
    """bnlab's norms in PyTorch: ln over (C, H, W) and in over (H, W), both affine."""
    return {"bn": lambda: nn.BatchNorm2d(channels),
            "gn": lambda: nn.GroupNorm(min(groups, channels), channels),
            "ln": lambda: nn.GroupNorm(1, channels),
            "in": lambda: nn.GroupNorm(channels, channels),
            "none": nn.Identity}[norm]()


class SimpleCNN(nn.Module):
    """The article's SimpleCNN, layer for layer."""

    def __init__(self, norm: str = "bn", num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = norm_layer(norm, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = norm_layer(norm, 32)
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = norm_layer(norm, cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        y = F.relu(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        if self.pad or self.stride > 1:  # option A: subsample, zero-pad channels
            x = x[:, :, ::self.stride, ::self.stride]
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(x + y)


class ResNet20(nn.Module):
    """CIFAR ResNet-20 with option-A shortcuts, as bnlab.models.ResNet20."""

    def __init__(self, norm: str = "bn", num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm = norm_layer(norm, 16)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for block in range(3):
                blocks.append(_Block(cin, cout, 2 if stage and not block else 1, norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.norm(self.conv(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make(name: str, norm: str) -> nn.Module:
    if name == "simple_cnn":
        return SimpleCNN(norm)
    if name == "resnet20":
        return ResNet20(norm)
    raise ValueError(f"no PyTorch version of {name}")


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = ["ResNet20", "SimpleCNN", "make", "parameter_count", "torch"]
