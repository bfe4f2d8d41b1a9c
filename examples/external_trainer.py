"""Someone else's training loop, with loss weights from a finished Ada-Segment run.

A plain PyTorch model with two losses (classification and regression on a
shared trunk) that knows nothing about this project's trainer. All it does is
ask the controller for its loss weights before each epoch, passing the mean
losses of the epoch before (the paper's Eq. 7); the first epoch uses weight 1
for every loss (the pseudo epoch). The run it asks must have been created
with the same loss names.

    python examples/external_trainer.py --controller http://127.0.0.1:8080 --run RUN --epochs 6

Prints one JSON line per epoch: {"epoch", "weights", "losses"}.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from controller_service.contract.client import ControllerClient

LOSS_NAMES = ("classification", "regression")


class TwoTaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.classify = nn.Linear(32, 3)
        self.regress = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.classify(features), self.regress(features).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--controller", required=True)
    parser.add_argument(
        "--run", required=True, help="a finished run with losses " + str(LOSS_NAMES)
    )
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    torch.manual_seed(0)
    inputs = torch.randn(512, 8)
    labels = inputs[:, :3].argmax(dim=1)
    targets = 5.0 * inputs[:, 3:].sum(dim=1)  # a loss scale far from the other's
    model = TwoTaskNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    client = ControllerClient(args.controller)

    weights = dict.fromkeys(LOSS_NAMES, 1.0)  # epoch 1: the pseudo epoch
    for epoch in range(1, args.epochs + 1):
        sums = dict.fromkeys(LOSS_NAMES, 0.0)
        batches = torch.randperm(len(inputs)).split(32)
        for index in batches:
            logits, values = model(inputs[index])
            losses = {
                "classification": nn.functional.cross_entropy(logits, labels[index]),
                "regression": nn.functional.mse_loss(values, targets[index]),
            }
            total = sum(weights[name] * loss for name, loss in losses.items())
            optimizer.zero_grad()
            total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            for name, loss in losses.items():
                sums[name] += loss.item() / len(batches)
        print(json.dumps({"epoch": epoch, "weights": weights, "losses": sums}), flush=True)
        if epoch < args.epochs:  # the weights of epoch e+1 from the mean losses of epoch e
            answer = client.weights(args.run, sums, epoch=epoch, epochs=args.epochs)
            weights = answer.weights


if __name__ == "__main__":
    main()
