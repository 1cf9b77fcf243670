"""Train a small Keras 3 model built from fastnn's layers (``fastnn.keras``).

The model: ``fastnn.keras.Conv2D`` (3x3, 4 filters, "same") -> ``LocallyConnected2D``
(3x3, 4 filters: unshared weights, Keras 2's layer) -> flatten -> ``BandedDense``
(32 units, a band of 24 diagonals each side) -> ``keras.layers.Dense`` (2, softmax),
trained with ``model.fit`` (Adam, sparse categorical cross-entropy) on synthetic 8x8
images (horizontal against vertical stripes, with noise). It runs on the jax backend
(or torch, when ``KERAS_BACKEND=torch`` is set), prints the loss per epoch and the
held-out accuracy, and exits non-zero if the model did not learn.

Run: ``python examples/keras_example.py``.
"""
# requires: keras, jax
import os

if os.environ.get("KERAS_BACKEND") not in ("jax", "torch"):
    os.environ["KERAS_BACKEND"] = "jax"      # before Keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fastnn.keras as fk  # noqa: E402
from _shared import stripes  # noqa: E402

EPOCHS = 4
SEED = 0


def make_data(n, rng):
    """n images (N, 8, 8, 1) of stripes: class 0 horizontal, class 1 vertical."""
    images, labels = stripes(n, rng)
    return images[..., None].astype(np.float32), labels


def main():
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    x, y = make_data(512, rng)
    x_test, y_test = make_data(256, rng)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        fk.Conv2D(4, 3, padding="same", activation="relu"),
        fk.LocallyConnected2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        fk.BandedDense(32, num_lower=24, num_upper=24, activation="relu"),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    print(f"backend {keras.backend.backend()}; weights of the locally connected layer:",
          [tuple(w.shape) for w in model.layers[1].get_weights()])
    history = model.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=0)
    for epoch, loss in enumerate(history.history["loss"]):
        print(f"epoch {epoch}  loss {loss:.4f}")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"held-out accuracy {accuracy:.3f}")
    losses = history.history["loss"]
    if not (losses[-1] < 0.5 * losses[0] and accuracy > 0.9):
        raise SystemExit(f"the model did not learn: loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
                         f"accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
