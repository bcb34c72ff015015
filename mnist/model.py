"""Three MNIST classifiers of rising capacity. Inputs are (B, 1, 28, 28), outputs are logits (B, 10)."""

import torch
from torch import nn


class SoftmaxRegression(nn.Module):
    """Multinomial logistic regression: one linear map from pixels to class logits."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # (B, 1, 28, 28) -> (B, 784) -> (B, 10)


class MLP(nn.Module):
    """Two hidden ReLU layers with dropout."""

    def __init__(self, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (B, 1, 28, 28) -> (B, 784)
            nn.Linear(28 * 28, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two conv-BN-ReLU-pool stages, then a small classifier head.

    BatchNorm lets a high learning rate train stably, which is what makes one or two epochs enough
    on a CPU. Under DDP each rank normalises with its own batch statistics (no SyncBatchNorm).
    """

    def __init__(self, width: int = 16, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1, bias=False),  # (B, W, 28, 28)
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, W, 14, 14)
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1, bias=False),  # (B, 2W, 14, 14)
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 2W, 7, 7)
        )
        self.head = nn.Sequential(
            nn.Flatten(),  # (B, 2W, 7, 7) -> (B, 2W * 49)
            nn.Linear(2 * width * 7 * 7, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, width: int, hidden: int, dropout: float) -> nn.Module:
    if name == "softmax":
        return SoftmaxRegression()
    if name == "mlp":
        return MLP(hidden=hidden, dropout=dropout)
    if name == "cnn":
        return CNN(width=width, hidden=hidden, dropout=dropout)
    raise ValueError(f"unknown model {name!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
