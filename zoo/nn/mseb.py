"""UCP's modified squeeze-and-excitation block (MSEB), whose gates score channel importance.

s(X) = sigmoid(W2 ReLU(W1 GAP(X))), output s(X) ⊙ X. The "modification" in the reference code: a layer of
C <= 16 channels gets a hidden width of 1 and biased FCs, where a plain SE block would have C/16 < 1 units.
"""

from __future__ import annotations

import torch
from torch import nn

SE_REDUCTION = 16


class MSEB(nn.Module):
    """Channel gates from global context; ``last_gates`` keeps the gates of the latest forward (B, C)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        small = channels <= reduction
        hidden = 1 if small else channels // reduction
        self.fc1 = nn.Linear(channels, hidden, bias=small)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=small)
        self.gate = nn.Sigmoid()
        self.last_gates: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gate(self.fc2(self.act(self.fc1(x.mean(dim=(2, 3))))))
        self.last_gates = gates.detach()
        return x * gates[:, :, None, None]
