"""CIFAR-10 classifiers: an MLP, a plain CNN and a small ResNet. Inputs (B, 3, 32, 32), logits (B, 10)."""

import torch
from torch import nn

from common.perf import count_flops


class MLP(nn.Module):
    """Two hidden ReLU layers on the flattened pixels: the baseline that ignores image structure."""

    def __init__(self, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (B, 3, 32, 32) -> (B, 3072)
            nn.Linear(3 * 32 * 32, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden // 2, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PlainCNN(nn.Module):
    """Three conv-ReLU-pool stages without normalisation or skips, then a linear head."""

    def __init__(self, width: int = 32, dropout: float = 0.1):
        super().__init__()
        layers = []
        channels = 3
        for out_channels in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out_channels
        self.features = nn.Sequential(*layers)  # (B, 3, 32, 32) -> (B, 4W, 4, 4)
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 4W, 4, 4) -> (B, 4W * 16)
            nn.Dropout(dropout),
            nn.Linear(4 * width * 16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity skip; a 1x1 conv-BN skip when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet: a 3x3 stem, three stages of BasicBlocks at widths W, 2W, 4W, global average pool.

    With width 16 and blocks=3 this is the ResNet-20 layout that the original ResNet paper (He et al.,
    2016) used for CIFAR-10: 0.27 M parameters. Each later stage halves the resolution: 32, 16, 8.
    """

    def __init__(self, width: int = 16, blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
        self.stages = nn.Sequential(*stages)  # (B, W, 32, 32) -> (B, 4W, 8, 8)
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        return self.head(features.mean(dim=(2, 3)))  # (B, 4W, 8, 8) -> (B, 4W) -> (B, 10)


def build_model(name: str, width: int, hidden: int, blocks: int, dropout: float) -> nn.Module:
    if name == "mlp":
        return MLP(hidden=hidden, dropout=dropout)
    if name == "cnn":
        return PlainCNN(width=width, dropout=dropout)
    if name == "resnet":
        return ResNet(width=width, blocks=blocks)
    raise ValueError(f"unknown model {name!r}")


def forward_flops_per_image(model: nn.Module) -> int:
    """Matmul and convolution FLOPs of one forward pass on one 32x32 image (training costs about 3x)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        flops = count_flops(lambda: model(torch.zeros(1, 3, 32, 32, device=device)))
    model.train(was_training)
    return flops
