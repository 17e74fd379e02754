"""A small numpy-only training loop, profiled with cirron.

    python examples/train_demo.py          # trains, prints ci.trace(), writes .cirron/spool/
    cirron traces view --depth 2           # read the same run back from disk

Logistic regression on a synthetic two-class problem: every epoch and batch is a span, the
forward/backward/update steps are scopes, the loss and accuracy are marks, and the weights are
snapshotted at every epoch's end (``cirron ui`` draws their histograms).
"""

from __future__ import annotations

import numpy as np

import cirron as ci


def make_data(n: int = 2048, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=dim)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x @ true_w + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


def batches_of(x: np.ndarray, y: np.ndarray, size: int):
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


def main(epochs: int = 3, batch_size: int = 512, lr: float = 0.5) -> None:
    ci.profile()
    x, y = make_data()
    w = np.zeros(x.shape[1], dtype=np.float32)
    b = np.float32(0.0)
    ci.wrap({"w": w}, name="linear")  # updated in place below: each epoch's end records linear.w

    for _epoch in ci.epochs(range(epochs)):
        for xb, yb in ci.batches(batches_of(x, y, batch_size)):
            with ci.scope("forward"):
                p = 1.0 / (1.0 + np.exp(-(xb @ w + b)))
                loss = float(-np.mean(yb * np.log(p + 1e-7) + (1 - yb) * np.log(1 - p + 1e-7)))
            with ci.scope("backward"):
                grad = p - yb
                gw = xb.T @ grad / len(xb)
                gb = grad.mean()
            with ci.scope("optimizer_step", lr=lr):
                w -= lr * gw
                b -= lr * gb
            ci.mark("loss", loss)
        accuracy = float(((x @ w + b > 0) == (y > 0.5)).mean())
        ci.mark("accuracy", accuracy, kind="summary")

    ci.trace(name="epoch")
    ci.shutdown()
    print(f"\nfinal accuracy {accuracy:.3f}; traces written to .cirron/spool/ — try: cirron traces view --depth 2")


if __name__ == "__main__":
    main()
