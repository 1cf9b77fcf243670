"""A LeNet-style CNN trained in plain NumPy on fastnn's forward and backward kernels.

The model: conv 3x3 (1 -> 8) -> relu -> max-pool 2 -> conv 3x3 (8 -> 16) -> relu ->
max-pool 2 -> dense (64 -> 10) -> softmax cross-entropy, trained with Adam written in
NumPy on scikit-learn's bundled 8x8 digits (1797 images; 80/20 split, fixed seed).
Every layer's forward and backward is a fastnn call, except the dense layer's matrix
products (NumPy ``@``). When PyTorch is installed, the same model (same initial
weights, same batches, same optimiser) is trained in PyTorch on the CPU too, for a
comparison of time per epoch and accuracy.

Run: ``python examples/numpy_lenet_digits.py``; the last line is
``test_accuracy=<held-out accuracy of the fastnn model>``.
"""
# requires: sklearn
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastnn
from _shared import Adam

EPOCHS = 12
BATCH = 32
LR = 0.01
SEED = 0


def load_data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]        # (N, 1, 8, 8) in [0, 1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)


def init_params(rng):
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return {
        "w1": he((8, 1, 3, 3), 9), "b1": np.zeros(8, np.float32),
        "w2": he((16, 8, 3, 3), 72), "b2": np.zeros(16, np.float32),
        "w3": he((64, 10), 64), "b3": np.zeros(10, np.float32),
    }


def forward(p, x):
    """Logits and what the backward pass needs."""
    z1 = fastnn.conv2d(x, p["w1"], p["b1"], padding=1)            # (N, 8, 8, 8)
    a1 = fastnn.relu(z1)
    s1, i1 = fastnn.max_pool2d(a1, 2, return_indices=True)        # (N, 8, 4, 4)
    z2 = fastnn.conv2d(s1, p["w2"], p["b2"], padding=1)           # (N, 16, 4, 4)
    a2 = fastnn.relu(z2)
    s2, i2 = fastnn.max_pool2d(a2, 2, return_indices=True)        # (N, 16, 2, 2)
    flat = s2.reshape(len(x), -1)                                 # (N, 64)
    logits = flat @ p["w3"] + p["b3"]
    return logits, (x, z1, a1, i1, s1, z2, a2, i2, s2, flat)


def backward(p, cache, logits, labels):
    x, z1, a1, i1, s1, z2, a2, i2, s2, flat = cache
    g_logits = fastnn.softmax_cross_entropy_backward(1.0, logits, labels)
    grads = {"w3": flat.T @ g_logits, "b3": g_logits.sum(axis=0)}
    g_s2 = (g_logits @ p["w3"].T).reshape(s2.shape)
    g_a2 = fastnn.max_pool2d_backward(g_s2, a2, 2, indices=i2)
    g_z2 = fastnn.relu_backward(g_a2, z2)
    g_s1, grads["w2"], grads["b2"] = fastnn.conv2d_backward(g_z2, s1, p["w2"], padding=1)
    g_a1 = fastnn.max_pool2d_backward(g_s1, a1, 2, indices=i1)
    g_z1 = fastnn.relu_backward(g_a1, z1)
    _, grads["w1"], grads["b1"] = fastnn.conv2d_backward(g_z1, x, p["w1"], padding=1,
                                                         need_input_grad=False)
    return grads


def batches(n, epoch):
    order = np.random.default_rng(SEED + epoch).permutation(n)
    return [order[i:i + BATCH] for i in range(0, n, BATCH)]


def train_fastnn(p, x_train, y_train, x_test, y_test):
    opt = Adam(p, LR)
    times = []
    for epoch in range(EPOCHS):
        start, total = time.perf_counter(), 0.0
        for idx in batches(len(x_train), epoch):
            logits, cache = forward(p, x_train[idx])
            total += float(fastnn.softmax_cross_entropy(logits, y_train[idx])) * len(idx)
            opt.step(p, backward(p, cache, logits, y_train[idx]))
        times.append(time.perf_counter() - start)
        acc = float((forward(p, x_test)[0].argmax(axis=1) == y_test).mean())
        print(f"fastnn epoch {epoch + 1:2d}: loss {total / len(x_train):.4f}  "
              f"test accuracy {acc:.4f}  {times[-1] * 1000:.0f} ms")
    return acc, times


def train_torch(torch, p0, x_train, y_train, x_test, y_test):
    nn, F = torch.nn, torch.nn.functional
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(p0["w1"]))
        model[0].bias.copy_(torch.from_numpy(p0["b1"]))
        model[3].weight.copy_(torch.from_numpy(p0["w2"]))
        model[3].bias.copy_(torch.from_numpy(p0["b2"]))
        model[7].weight.copy_(torch.from_numpy(p0["w3"].T))
        model[7].bias.copy_(torch.from_numpy(p0["b3"]))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    times = []
    for epoch in range(EPOCHS):
        start = time.perf_counter()
        for idx in batches(len(x_train), epoch):
            idx = torch.from_numpy(idx)
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return acc, times


def main():
    x_train, x_test, y_train, y_test = load_data()
    print(f"digits: {len(x_train)} training and {len(x_test)} test images, {EPOCHS} epochs, "
          f"batch {BATCH}, {fastnn.get_num_threads()} fastnn threads")
    p0 = init_params(np.random.default_rng(SEED))
    acc, times = train_fastnn({k: v.copy() for k, v in p0.items()}, x_train, y_train, x_test,
                              y_test)
    # The first epoch includes one-time warm-up; the median is the steady state.
    print(f"fastnn + NumPy: {np.median(times) * 1000:.0f} ms/epoch (median), "
          f"test accuracy {acc:.4f}")
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: comparison skipped")
    else:
        torch.manual_seed(SEED)
        t_acc, t_times = train_torch(torch, p0, x_train, y_train, x_test, y_test)
        print(f"PyTorch {torch.__version__} CPU ({torch.get_num_threads()} threads): "
              f"{np.median(t_times) * 1000:.0f} ms/epoch (median), test accuracy {t_acc:.4f}")
    print(f"test_accuracy={acc:.4f}")


if __name__ == "__main__":
    main()
