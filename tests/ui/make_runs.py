"""Real runs for the UI tests: a small torch training loop with snapshots, and the ranks of a
run. Each runs in its own process (the served ``@ci.inference`` run is serve_app.py).

    python tests/ui/make_runs.py train DIR      # writes DIR/.cirron/
    RANK=1 CIRRON_RUN_ID=r python tests/ui/make_runs.py rank DIR   # one rank of a run (rank 1: slow loader)
    python tests/ui/make_runs.py live DIR       # keeps writing until DIR/stop exists
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
    for epoch in ci.epochs(range(epochs)):
        if epoch == 1:
            ci.flush()  # at least two batch files, however fast the machine (a test truncates the last)
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
            with ci.scope("forward"):  # 2 ms on every rank: the data_load share tells the ranks apart
                time.sleep(0.002)
                loss = float(((xb - w) ** 2).mean())
            with ci.scope("backward"):
                g = 2 * (w - xb) / xb.size
            with ci.scope("optimizer_step"):
                w -= (0.05 if slow else 0.1) * g  # the ranks' loss curves differ
            ci.mark("loss", loss)
    ci.shutdown()


def live(stop_file: str = "stop") -> None:
    """A run still going: a step with a loss mark every 20 ms, flushed every 0.2 s, until the
    file ``stop`` appears (or two minutes pass)."""
    ci.profile(flush_interval=0.2)
    deadline = time.monotonic() + 120
    step = 0
    for _epoch in ci.epochs(range(10**6)):
        for _ in ci.batches(range(10)):
            with ci.scope("forward"):
                time.sleep(0.02)
            ci.mark("loss", 1.0 / (1 + step))
            step += 1
        if os.path.exists(stop_file) or time.monotonic() > deadline:
            break
    ci.shutdown()


if __name__ == "__main__":
    what, where = sys.argv[1], sys.argv[2]
    os.makedirs(where, exist_ok=True)
    os.chdir(where)
    {"train": train, "rank": rank, "live": live}[what]()
