"""Real runs for the UI tests: a small torch training loop with snapshots, and an
``@ci.inference`` workload with streamed results. Each runs in its own process.

    python tests/ui/make_runs.py train DIR      # writes DIR/.cirron/
    python tests/ui/make_runs.py inference DIR
    RANK=1 CIRRON_RUN_ID=r python tests/ui/make_runs.py rank DIR   # one rank of a run (rank 1: slow loader)
"""

from __future__ import annotations

import os
import sys
import time

import cirron as ci


def train(epochs: int = 4, batches: int = 12) -> None:
    import torch

    torch.manual_seed(0)
    ci.profile(snapshots="stats")
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model = ci.wrap(model, optimizer=opt)
    x = torch.randn(batches * 32, 16)
    y = (x.sum(dim=1, keepdim=True) > 0).float()

    def loader():
        for i in range(batches):
            time.sleep(0.001)
            yield x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]

    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _epoch in ci.epochs(range(epochs)):
        total = 0.0
        for step, (xb, yb) in enumerate(ci.batches(loader())):
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            ci.mark("loss", loss.item(), step=step)
            ci.mark("lr", opt.param_groups[0]["lr"])
            total += loss.item()
        ci.mark("epoch_loss", total / batches, kind="summary")
    ci.shutdown()


def inference(n: int = 40) -> None:
    ci.profile()

    @ci.inference
    def predict(prompt: str) -> dict:
        time.sleep(0.001 * (1 + len(prompt) % 7))
        return {"text": prompt[::-1], "usage": {"prompt_tokens": len(prompt), "completion_tokens": 8,
                                                 "total_tokens": len(prompt) + 8}}

    @ci.inference
    def generate(prompt: str):
        for i in range(6 + len(prompt) % 5):
            time.sleep(0.0005)
            yield f"tok{i} "

    for i in range(n):
        predict(f"prompt number {i}")
        "".join(generate(f"stream {i}"))
    ci.shutdown()


def rank(steps: int = 30) -> None:
    """A numpy-only step loop; rank 1's data loading is made slow on purpose (a straggler)."""
    import numpy as np

    ci.profile()
    slow = os.environ.get("RANK") == "1"
    w = np.zeros(64)

    def loader():
        for _ in range(steps):
            time.sleep(0.006 if slow else 0.001)
            yield np.ones(64)

    for _epoch in ci.epochs(range(2)):
        for xb in ci.batches(loader()):
            with ci.scope("forward"):
                loss = float(((xb - w) ** 2).mean())
            with ci.scope("backward"):
                g = 2 * (w - xb) / xb.size
            with ci.scope("optimizer_step"):
                w -= 0.1 * g
            ci.mark("loss", loss)
    ci.shutdown()


if __name__ == "__main__":
    what, where = sys.argv[1], sys.argv[2]
    os.makedirs(where, exist_ok=True)
    os.chdir(where)
    {"train": train, "inference": inference, "rank": rank}[what]()
