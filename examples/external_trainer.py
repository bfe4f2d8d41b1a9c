"""Someone else's training loop, with loss weights from a finished Ada-Segment run.

A plain PyTorch model with two losses (classification and regression on a
shared trunk) that knows nothing about this project's trainer. It asks the
controller for its loss weights before each epoch, passing the mean losses of
the epoch before (the paper's Eq. 7); the first epoch uses weight 1 for every
loss (the pseudo epoch). Each head trains at lr/λ of its loss, as the paper
does (``--no-head-rule`` only weights the losses). The run it asks must have
been created with the same loss names.

    python examples/external_trainer.py --controller http://127.0.0.1:8080 --run RUN --epochs 6

Prints one JSON line per epoch: {"epoch", "weights", "losses", "lrs"}.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from controller_service.contract.client import ControllerClient
from controller_service.contract.external import (
    DEFAULT_FIRST_EPOCH,
    FIRST_EPOCHS,
    HEAD_KEY,
    TransferWeights,
    scale_head_lrs,
)

LOSS_NAMES = ("classification", "regression")
LR = 1e-2


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
    parser.add_argument(
        "--first-epoch",
        default=DEFAULT_FIRST_EPOCH,
        choices=FIRST_EPOCHS,
        help="epoch 1 at weights 1, or at the policy's weights for the search's l¹",
    )
    parser.add_argument("--no-head-rule", action="store_true", help="heads at the plain lr")
    args = parser.parse_args()

    torch.manual_seed(0)
    inputs = torch.randn(512, 8)
    labels = inputs[:, :3].argmax(dim=1)
    targets = 5.0 * inputs[:, 3:].sum(dim=1)  # a loss scale far from the other's
    model = TwoTaskNet()
    groups = [  # one group per loss head (tagged with its loss), one for the shared trunk
        {"params": model.trunk.parameters()},
        {"params": model.classify.parameters(), HEAD_KEY: "classification"},
        {"params": model.regress.parameters(), HEAD_KEY: "regression"},
    ]
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9)
    transfer = TransferWeights(
        ControllerClient(args.controller),
        args.run,
        LOSS_NAMES,
        args.epochs,
        first_epoch=args.first_epoch,
    )

    for epoch in range(1, args.epochs + 1):
        weights = dict(transfer.weights)
        if not args.no_head_rule:
            scale_head_lrs(optimizer.param_groups, weights, LR)
        for index in torch.randperm(len(inputs)).split(32):
            logits, values = model(inputs[index])
            losses = {
                "classification": nn.functional.cross_entropy(logits, labels[index]),
                "regression": nn.functional.mse_loss(values, targets[index]),
            }
            optimizer.zero_grad()
            transfer.weighted(losses).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        means = transfer.losses.means()
        lrs = [group["lr"] for group in optimizer.param_groups]
        print(
            json.dumps({"epoch": epoch, "weights": weights, "losses": means, "lrs": lrs}),
            flush=True,
        )
        transfer.end_epoch(epoch)  # the weights of epoch e+1 from the mean losses of epoch e


if __name__ == "__main__":
    main()
