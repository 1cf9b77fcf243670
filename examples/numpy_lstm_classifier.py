"""An LSTM sequence classifier trained in plain NumPy on fastnn's LSTM kernels.

The task (synthetic, generated here): each sequence is 15 steps of a random sign
(+1 or -1) plus Gaussian noise; the label says whether the signs sum to a positive
number -- the network has to count over the whole sequence (one step alone predicts
the label only about 60% of the time).

The model: ``fastnn.lstm(..., training=True)`` over the sequence, a dense head on the
final hidden state (NumPy ``@``) and ``fastnn.softmax_cross_entropy``; the backward
is ``fastnn.softmax_cross_entropy_backward`` and ``fastnn.lstm_backward`` (through
time, from the final-state gradient). Adam is written in NumPy. The script prints the
loss as it falls and the held-out accuracy, and exits with an error if the accuracy
is not clearly above chance.

Run: ``python examples/numpy_lstm_classifier.py``.
"""
# requires:
import time

import numpy as np

import fastnn
from _shared import Adam

T, I, H, CLASSES = 15, 1, 24, 2
TRAIN, TEST, BATCH, STEPS, LR = 4096, 1024, 64, 300, 0.01
NOISE = 0.3
SEED = 0


def make_data(n, rng):
    signs = rng.choice([-1.0, 1.0], size=(n, T))
    x = (signs + NOISE * rng.standard_normal((n, T)))[:, :, None].astype(np.float32)
    y = (signs.sum(axis=1) > 0).astype(np.int64)        # T is odd: no ties
    return x, y


def init_params(rng):
    scale = 1.0 / np.sqrt(H)
    return {
        "kernel": rng.uniform(-scale, scale, (I + H, 4 * H)).astype(np.float32),
        "bias": np.zeros(4 * H, np.float32),
        "w": rng.uniform(-scale, scale, (H, CLASSES)).astype(np.float32),
        "b": np.zeros(CLASSES, np.float32),
    }


def forward(p, x, training=False):
    if training:
        _, (h_T, _), cache = fastnn.lstm(x, None, None, p["kernel"], p["bias"], training=True)
    else:
        _, (h_T, _) = fastnn.lstm(x, None, None, p["kernel"], p["bias"])
        cache = None
    return h_T @ p["w"] + p["b"], h_T, cache


def train_step(p, opt, x, y):
    logits, h_T, cache = forward(p, x, training=True)
    loss = float(fastnn.softmax_cross_entropy(logits, y))
    g_logits = fastnn.softmax_cross_entropy_backward(1.0, logits, y)
    grads = {"w": h_T.T @ g_logits, "b": g_logits.sum(axis=0)}
    g_hT = g_logits @ p["w"].T
    # Only the final state feeds the head: no gradient for the per-step outputs.
    _, _, _, grads["kernel"], grads["bias"] = fastnn.lstm_backward(None, g_hT, None, cache)
    opt.step(p, grads)
    return loss


def main():
    rng = np.random.default_rng(SEED)
    x_train, y_train = make_data(TRAIN, rng)
    x_test, y_test = make_data(TEST, rng)
    p = init_params(rng)
    opt = Adam(p, LR)
    print(f"LSTM H={H} on {TRAIN} sequences of {T} steps, batch {BATCH}, {STEPS} steps")
    start, window = time.perf_counter(), []
    for step in range(1, STEPS + 1):
        idx = rng.integers(0, TRAIN, BATCH)
        window.append(train_step(p, opt, x_train[idx], y_train[idx]))
        if step == 1 or step % 30 == 0:
            print(f"step {step:4d}: mean loss {np.mean(window):.4f}")
            window = []
    seconds = time.perf_counter() - start
    acc = float((forward(p, x_test)[0].argmax(axis=1) == y_test).mean())
    chance = max(y_test.mean(), 1 - y_test.mean())
    print(f"trained in {seconds:.1f} s; held-out accuracy {acc:.4f} (majority class {chance:.4f})")
    print(f"test_accuracy={acc:.4f}")
    if acc < 0.9:
        raise SystemExit(f"accuracy {acc:.4f} is not clearly above chance ({chance:.4f})")


if __name__ == "__main__":
    main()
