"""Pieces the example scripts share (not an example itself: tests/test_examples.py skips
files whose name starts with an underscore). Each script imports it from its own folder,
so the scripts still run standalone: ``python examples/<script>.py``."""
import numpy as np


class Adam:
    """Adam in NumPy over a dict of parameter arrays, updated in place."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, betas[0], betas[1], eps, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params, grads):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for k, g in grads.items():
            self.m[k] = self.b1 * self.m[k] + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
            params[k] -= self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + self.eps)


def stripes(n, rng):
    """n noisy 8x8 images (N, 8, 8) of stripes and their labels: class 0 horizontal,
    class 1 vertical."""
    labels = rng.integers(0, 2, n)
    phase = rng.integers(0, 2, n)
    rows = (np.arange(8)[:, None] + phase[:, None, None]) % 2 * np.ones((1, 8))
    images = np.where(labels[:, None, None] == 0, rows, rows.transpose(0, 2, 1))
    return images + 0.5 * rng.standard_normal(images.shape), labels
