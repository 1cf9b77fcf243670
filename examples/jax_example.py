"""Train a tiny CNN in JAX whose layers are fastnn's kernels (``fastnn.jax``).

The model: conv 3x3 (1 -> 8, padding 1) -> relu -> max-pool 2 -> dense (128 -> 2),
with softmax cross-entropy, on synthetic 8x8 images (horizontal against vertical
stripes, with noise). The whole training step -- forward, ``jax.grad`` through
fastnn's backward kernels, and the SGD update -- is one ``jax.jit`` function; the
dense layer is a plain ``jnp`` product. At the end ``jax.vmap`` gives per-example
gradients of the convolution weights. The script prints the loss as it falls and
exits non-zero if it did not fall.

Run: ``python examples/jax_example.py``.
"""
# requires: jax
import time

import jax
import jax.numpy as jnp
import numpy as np

import fastnn.jax as fj
from _shared import stripes

STEPS = 40
LR = 0.2
SEED = 0


def make_data(n, rng):
    """n images (N, 1, 8, 8) of stripes: class 0 horizontal, class 1 vertical."""
    images, labels = stripes(n, rng)
    return images[:, None].astype(np.float32), labels.astype(np.int32)


def init(rng):
    return {"conv_w": jnp.asarray(0.3 * rng.standard_normal((8, 1, 3, 3)), jnp.float32),
            "conv_b": jnp.zeros(8, jnp.float32),
            "dense_w": jnp.asarray(0.1 * rng.standard_normal((8 * 4 * 4, 2)), jnp.float32),
            "dense_b": jnp.zeros(2, jnp.float32)}


def logits(params, x):
    h = fj.relu(fj.conv2d(x, params["conv_w"], params["conv_b"], padding=1))
    h = fj.max_pool2d(h, 2)
    return h.reshape(h.shape[0], -1) @ params["dense_w"] + params["dense_b"]


def loss_fn(params, x, y):
    return fj.softmax_cross_entropy(logits(params, x), y)


@jax.jit
def train_step(params, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), loss


def main():
    rng = np.random.default_rng(SEED)
    x, y = make_data(256, rng)
    x_test, y_test = make_data(256, rng)
    params = init(rng)
    start = time.perf_counter()
    losses = []
    for step in range(STEPS):
        params, loss = train_step(params, x, y)
        losses.append(float(loss))
        if step % 5 == 0 or step == STEPS - 1:
            print(f"step {step:2d}  loss {losses[-1]:.4f}")
    print(f"{STEPS} jitted steps in {time.perf_counter() - start:.2f} s (first one compiles)")

    # Per-example gradients of the convolution weights: vmap over single images.
    def one(x1, y1):
        return jax.grad(loss_fn)(params, x1[None], y1[None])["conv_w"]

    per_example = jax.jit(jax.vmap(one))(x[:8], y[:8])
    norms = np.linalg.norm(np.asarray(per_example).reshape(8, -1), axis=1)
    print("per-example conv gradient norms:", np.round(norms, 4))

    accuracy = float(np.mean(np.argmax(np.asarray(logits(params, x_test)), axis=1) == y_test))
    print(f"held-out accuracy {accuracy:.3f}")
    if not losses[-1] < 0.5 * losses[0]:
        raise SystemExit(f"the loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
