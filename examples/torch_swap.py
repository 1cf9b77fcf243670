"""Move a PyTorch CNN onto fastnn's kernels with ``fastnn.torch.swap`` and train both.

The model: conv 3x3 (1 -> 8) -> relu -> max-pool 2 -> conv 3x3 (8 -> 16) -> relu ->
max-pool 2 -> linear (64 -> 10), with ``nn.CrossEntropyLoss``, on scikit-learn's 8x8
digits (synthetic two-class images when scikit-learn is not installed). The native
model and its swapped copy start from the same weights and see the same batches with
the same optimiser, so their loss curves agree to float32 rounding; the script prints
both curves, the largest relative difference, the time per training step of each and
the held-out accuracy of the swapped model.

Run: ``python examples/torch_swap.py``.
"""
# requires: torch
import time

import numpy as np
import torch
import torch.nn as nn

import fastnn.torch as ft

EPOCHS = 3
BATCH = 32
LR = 0.05
SEED = 0


def load_data():
    """(x_train, y_train, x_test, y_test) as float32 (N, 1, 8, 8) images and int64 labels."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        rng = np.random.default_rng(SEED)
        y = rng.integers(0, 2, 1500)
        x = rng.standard_normal((1500, 1, 8, 8)).astype(np.float32) * 0.5
        x[y == 1, :, 2:6, 2:6] += 1.0                     # class 1: a bright square
        x_tr, x_te, y_tr, y_te = x[:1200], x[1200:], y[:1200], y[1200:]
    else:
        digits = load_digits()
        x = (digits.images / 16.0).astype(np.float32)[:, None]
        x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2,
                                                  random_state=SEED, stratify=digits.target)
    return (torch.from_numpy(x_tr), torch.from_numpy(np.asarray(y_tr, np.int64)),
            torch.from_numpy(x_te), torch.from_numpy(np.asarray(y_te, np.int64)))


def make_model():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 10))


def train(model, x, y, order):
    """SGD with momentum over the fixed batch order; (mean loss per epoch, s per step)."""
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    curve, times = [], []
    for epoch in range(EPOCHS):
        total = 0.0
        for idx in order[epoch]:
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            total += loss.item()
        curve.append(total / len(order[epoch]))
    return curve, float(np.median(times[1:]))


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main():
    torch.manual_seed(SEED)
    x_tr, y_tr, x_te, y_te = load_data()
    native = make_model()
    fast = ft.swap(native)                   # a deep copy: the same initial weights
    print("swapped model:", fast)
    rng = np.random.default_rng(SEED)
    order = [np.array_split(rng.permutation(len(x_tr)), len(x_tr) // BATCH)
             for _ in range(EPOCHS)]
    native_curve, native_step = train(native, x_tr, y_tr, order)
    fast_curve, fast_step = train(fast, x_tr, y_tr, order)
    print(f"{'epoch':>5}  {'torch loss':>12}  {'fastnn loss':>12}")
    for epoch, (a, b) in enumerate(zip(native_curve, fast_curve)):
        print(f"{epoch:>5}  {a:12.6f}  {b:12.6f}")
    rel = max(abs(a - b) / abs(a) for a, b in zip(native_curve, fast_curve))
    print(f"largest relative difference between the curves: {rel:.2e}")
    print(f"time per training step: torch {native_step * 1e3:.2f} ms, "
          f"fastnn.torch {fast_step * 1e3:.2f} ms (batch {BATCH}, "
          f"{torch.get_num_threads()} torch threads)")
    print("calls that ran on PyTorch instead of fastnn:", ft.fallback_counts() or "none")
    if rel > 1e-3:       # float32 rounding of two kernels, compounded over the steps
        raise SystemExit(f"loss curves disagree: relative difference {rel:.2e}")
    print(f"test_accuracy={accuracy(fast, x_te, y_te):.4f}")


if __name__ == "__main__":
    main()
