"""fastnn.keras on the torch, jax and numpy backends.

Keras picks its backend (KERAS_BACKEND) once, at import, so each backend runs in its
own interpreter: this file run as a script (``python test_keras_adapter.py BACKEND``)
performs every check for that backend and prints one JSON line of results, and the
tests below report them one by one. References: the Keras layer itself after a
set_weights(get_weights()) round trip (Conv2D, LSTM, GRU, Dense), and for the
locally connected layers a float64 NumPy transcription of Keras 2's computation.
"""
import contextlib
import functools
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

# Importing keras needs a backend; the tests' own interpreter only needs to know that
# Keras is installed (numpy, unless one is chosen), and must not pass the choice on.
_chosen = os.environ.get("KERAS_BACKEND")
os.environ.setdefault("KERAS_BACKEND", "numpy")
try:
    keras = pytest.importorskip("keras")
finally:
    if _chosen is None:
        os.environ.pop("KERAS_BACKEND", None)

from helpers import assert_close, numeric_grad  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("torch", "jax", "numpy")
TRAINING = ("torch", "jax")


# ------------------------------------------------------------------ Keras 2 reference
def keras2_local_conv(x, kernel, bias, kernel_size, strides, data_format):
    """Keras 2's LocallyConnected{1,2}D (implementation=1) in float64 NumPy: its
    backend.local_conv (each patch flattened in the input's memory order, one
    batch_dot per output position) then backend.bias_add (for channels_first a
    (..., filters) bias reshaped, not transposed, to (filters, ...))."""
    nd = len(kernel_size)
    last = data_format == "channels_last"
    spatial = x.shape[1:-1] if last else x.shape[2:]
    out = tuple((s - k) // st + 1 for s, k, st in zip(spatial, kernel_size, strides))
    n, features, filters = x.shape[0], kernel.shape[1], kernel.shape[2]
    patches = []
    for pos in itertools.product(*(range(o) for o in out)):
        window = [slice(p * st, p * st + k) for p, st, k in zip(pos, strides, kernel_size)]
        index = [slice(None)] + window + [slice(None)] if last else \
            [slice(None), slice(None)] + window
        patches.append(x[tuple(index)].reshape(1, n, features))
    y = np.einsum("pnf,pfk->pnk", np.concatenate(patches, axis=0), kernel)
    y = y.reshape(out + (n, filters))
    perm = [nd] + list(range(nd)) + [nd + 1] if last else [nd, nd + 1] + list(range(nd))
    y = y.transpose(perm)
    if bias is not None:
        y = y + (bias.reshape((1,) + bias.shape) if last
                 else bias.reshape((1, filters) + bias.shape[:-1]))
    return y


# ------------------------------------------------------------------ worker (one backend)
def _worker_checks():
    """The checks, as name -> (function, backends). Defined inside so that the tests'
    interpreter never imports fastnn.keras."""
    import fastnn
    import fastnn.keras as fk
    backend = keras.backend.backend()
    ops = keras.ops
    rng = np.random.default_rng(0)

    def numpy_of(t):
        return np.asarray(ops.convert_to_numpy(t))

    def leaves(y):
        return list(y) if isinstance(y, (list, tuple)) else [y]

    def grads(layer, x, weights, **call):
        """Gradients of sum(y_i * weights_i) w.r.t. x and the trainable variables."""
        if backend == "torch":
            import torch
            xt = torch.tensor(x, requires_grad=True)
            loss = sum((y * torch.tensor(w)).sum()
                       for y, w in zip(leaves(layer(xt, **call)), weights))
            loss.backward()
            return [xt.grad.numpy()] + [v.value.grad.numpy() for v in layer.trainable_variables]
        import jax
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]

        def loss(tv, x):
            y, _ = layer.stateless_call(tv, ntv, x, **call)
            return sum((a * w).sum() for a, w in zip(leaves(y), weights))

        g_tv, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(tv, x)
        return [np.asarray(g_x)] + [np.asarray(g) for g in g_tv]

    # Layers start from constant weights and get random ones from NumPy: random
    # initializers compile one XLA program per shape on the jax backend, which would
    # dominate the run.
    zeros = dict(kernel_initializer="zeros", bias_initializer="zeros")
    zeros_rnn = dict(zeros, recurrent_initializer="zeros")

    def randomize(layer, keep=None):
        values = [0.5 * rng.standard_normal(w.shape).astype(np.float32)
                  for w in layer.get_weights()]
        if keep is not None:
            values[0] = values[0] * keep
        layer.set_weights(values)
        return values

    def against_keras(mine, ref, x, what, grad_keep=None, **call):
        """Outputs (and on torch/jax gradients) of ``mine`` after set_weights(ref's);
        ``grad_keep``: where the kernel gradients must agree (elsewhere mine is 0)."""
        ref.build(x.shape)
        randomize(ref, grad_keep)
        y_ref = leaves(ref(x, **call))
        mine.build(x.shape)
        mine.set_weights(ref.get_weights())
        for a, b in zip(mine.get_weights(), ref.get_weights()):
            np.testing.assert_array_equal(a, b)
        y = leaves(mine(x, **call))
        assert len(y) == len(y_ref), what
        for a, b in zip(y, y_ref):
            assert tuple(a.shape) == tuple(b.shape), what
            assert_close(numpy_of(a), numpy_of(b), np.float32, f"{what} output")
        if backend in TRAINING:
            weights = [rng.standard_normal(tuple(b.shape)).astype(np.float32) for b in y_ref]
            g, g_ref = grads(mine, x, weights, **call), grads(ref, x, weights, **call)
            assert len(g) == len(g_ref) == 1 + len(ref.trainable_variables), what
            if grad_keep is not None:
                assert np.all(g[1][~grad_keep] == 0), f"{what}: gradient off the kernel's support"
                g[1], g_ref[1] = g[1][grad_keep], g_ref[1][grad_keep]
            for i, (a, b) in enumerate(zip(g, g_ref)):
                assert_close(a, b, np.float32, f"{what} gradient {i}")

    def image(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def conv2d():
        x = image(2, 9, 8, 4)
        configs = [dict(padding="same", strides=2), dict(groups=2, dilation_rate=2),
                   dict(kernel_size=2, strides=(2, 1), padding="same", activation="relu"),
                   dict(use_bias=False, strides=3)]
        for kw in configs:
            kw = dict(dict(filters=6, kernel_size=3), **kw, **zeros)
            against_keras(fk.Conv2D(**kw), keras.layers.Conv2D(**kw), x, f"Conv2D {kw}")
        if backend != "numpy":      # Keras's numpy backend convolves channels_last only
            kw = dict(filters=6, kernel_size=3, strides=2, padding="same",
                      data_format="channels_first", **zeros)
            against_keras(fk.Conv2D(**kw), keras.layers.Conv2D(**kw),
                          np.ascontiguousarray(x.transpose(0, 3, 1, 2)), f"Conv2D {kw}")

    # On jax every Keras recurrent reference (a scan, and its gradient) is compiled, which
    # dominates the run: fewer argument combinations there (the layers' handling of
    # them is backend-independent code, covered on the other backends).
    def few_on_jax(configs, keep):
        return [configs[i] for i in keep] if backend == "jax" else configs

    def lstm():
        x = image(3, 5, 4)
        for kw in few_on_jax([dict(), dict(return_sequences=True, return_state=True),
                              dict(go_backwards=True, return_sequences=True, use_bias=False)],
                             [1]):
            kw = dict(kw, **zeros_rnn)
            against_keras(fk.LSTM(6, **kw), keras.layers.LSTM(6, **kw), x, f"LSTM {kw}")
        states = [image(3, 6), image(3, 6)]
        against_keras(fk.LSTM(6, return_state=True, **zeros_rnn),
                      keras.layers.LSTM(6, return_state=True, **zeros_rnn),
                      x, "LSTM initial_state", initial_state=states)
        for forget in (True, False):        # Keras's bias initialisation (unit_forget_bias)
            mine, ref = (cls(6, unit_forget_bias=forget, bias_initializer="zeros")
                         for cls in (fk.LSTM, keras.layers.LSTM))
            mine.build(x.shape)
            ref.build(x.shape)
            np.testing.assert_array_equal(mine.get_weights()[2], ref.get_weights()[2])

    def gru():
        x = image(3, 5, 4)
        for kw in few_on_jax([dict(return_sequences=True),
                              dict(reset_after=False, return_state=True),
                              dict(go_backwards=True, use_bias=False)], [0, 1]):
            kw = dict(kw, **zeros_rnn)
            against_keras(fk.GRU(6, **kw), keras.layers.GRU(6, **kw), x, f"GRU {kw}")
        against_keras(fk.GRU(6, **zeros_rnn), keras.layers.GRU(6, **zeros_rnn), x,
                      "GRU initial_state", initial_state=[image(3, 6)])

    def dense_like():
        x = image(4, 3, 7)          # Dense takes any leading axes
        band = fastnn.band_part(np.ones((7, 5)), 1, 2).astype(bool)
        mask = rng.random((7, 5)) < 0.4
        for mine, keep, what in ((fk.BandedDense(5, 1, 2, activation="tanh", **zeros), band,
                                  "BandedDense"),
                                 (fk.MaskedDense(5, mask, activation="tanh", **zeros), mask,
                                  "MaskedDense")):
            ref = keras.layers.Dense(5, activation="tanh", **zeros)
            # a Dense kernel that is zero off the band / mask
            against_keras(mine, ref, x, what, grad_keep=keep)
            kernel, bias = ref.get_weights()
            mine.set_weights([kernel + 5.0 * ~keep, bias])     # what lies off it is unused
            assert_close(numpy_of(mine(x)), numpy_of(ref(x)), np.float32, what)

    def locally_connected():
        cases = [(fk.LocallyConnected2D, (2, 7, 6, 3), dict(kernel_size=(3, 2), strides=(2, 1))),
                 (fk.LocallyConnected2D, (2, 3, 6, 5), dict(kernel_size=2, strides=(1, 2),
                                                            data_format="channels_first")),
                 (fk.LocallyConnected1D, (2, 9, 3), dict(kernel_size=3, strides=2)),
                 (fk.LocallyConnected1D, (2, 3, 8), dict(kernel_size=2,
                                                         data_format="channels_first"))]
        # (Keras's numpy backend stores float64 weights as float32: float32 there only)
        wide = contextlib.nullcontext
        if backend == "jax":
            import jax
            wide = functools.partial(jax.enable_x64, True)
        for cls, shape, kw in cases:
            nd = len(shape) - 2
            ks, st = ((v,) * nd if isinstance(v, int) else v
                      for v in (kw["kernel_size"], kw.get("strides", 1)))
            fmt = kw.get("data_format", "channels_last")
            what = f"{cls.__name__} {kw}"
            x = rng.standard_normal(shape)
            layer32 = cls(4, **kw, **zeros)
            layer32.build(shape)
            kernel, bias = (w.astype(np.float64) for w in randomize(layer32))
            y = numpy_of(layer32(x.astype(np.float32)))
            want = keras2_local_conv(x, kernel, bias, ks, st, fmt)
            assert_close(y, want, np.float32, what)
            if backend not in TRAINING:
                continue
            with wide():
                layer = cls(4, dtype="float64", **kw, **zeros)
                layer.build(shape)
                layer.set_weights([kernel, bias])
                assert_close(numpy_of(layer(x)), want, np.float64, what)
                # the loss is linear in each argument: central differences are exact
                weights = rng.standard_normal(want.shape)
                g = grads(layer, x, [weights])
            arrays = [x.copy(), kernel.copy(), bias.copy()]

            def loss():
                return float(np.sum(keras2_local_conv(*arrays, ks, st, fmt) * weights))

            for i, name in enumerate(("x", "kernel", "bias")):
                assert g[i].dtype == np.float64
                assert_close(g[i], numeric_grad(loss, arrays[i], eps=1.0), np.float64,
                             f"{what} gradient of {name}")

    def config_round_trip():
        x = image(2, 6, 6, 3)
        seq = image(2, 5, 3)
        for layer, inp in ((fk.Conv2D(4, 3, **zeros), x),
                           (fk.LocallyConnected2D(2, 3, strides=2, **zeros), x),
                           (fk.LocallyConnected1D(2, 2, **zeros), seq),
                           (fk.BandedDense(4, 0, 1, **zeros), seq),
                           (fk.MaskedDense(4, np.eye(3, 4), **zeros), seq),
                           (fk.LSTM(4, return_sequences=True, **zeros_rnn), seq),
                           (fk.GRU(4, reset_after=False, **zeros_rnn), seq)):
            layer.build(inp.shape)
            randomize(layer)
            y = numpy_of(layer(inp))
            clone = type(layer).from_config(layer.get_config())
            clone.build(inp.shape)
            clone.set_weights(layer.get_weights())
            np.testing.assert_array_equal(numpy_of(clone(inp)), y)

    def bad_arguments():
        import pytest as _pytest
        for make, match in (
                (lambda: fk.LocallyConnected2D(2, 3, padding="same"), "padding must be 'valid'"),
                (lambda: fk.LocallyConnected1D(2, 3, implementation=2), "implementation must be 1"),
                (lambda: fk.LSTM(3, activation="relu"), "activation must be 'tanh'"),
                (lambda: fk.GRU(3, recurrent_activation="hard_sigmoid"),
                 "recurrent_activation must be 'sigmoid'"),
                (lambda: fk.LSTM(3, dropout=0.1), "dropout is not supported"),
                (lambda: fk.GRU(3, stateful=True), "stateful"),
                (lambda: fk.MaskedDense(3, np.ones((4, 2))), "mask must have shape"),
                (lambda: fk.BandedDense(3, 1.5, 0), "num_lower must be an int")):
            with _pytest.raises((ValueError, TypeError), match=match):
                make()
        with _pytest.raises(ValueError, match="mask has 4 rows"):
            fk.MaskedDense(2, np.ones((4, 2)))(image(3, 5))
        with _pytest.raises(ValueError, match="larger than the input"):
            fk.LocallyConnected2D(2, 4)(image(1, 3, 3, 1))
        with _pytest.raises(ValueError, match="masked"):
            fk.LSTM(2)(image(2, 3, 1), mask=np.ones((2, 3), bool))

    def fit_step():
        keras.utils.set_random_seed(1)
        x_img, x_seq = image(16, 6, 6, 2), image(16, 5, 3)
        target = rng.standard_normal((16, 1)).astype(np.float32)
        mask = rng.random((64, 8)) < 0.5
        models = [
            (keras.Sequential([keras.Input((6, 6, 2)), fk.Conv2D(3, 3, padding="same", **zeros),
                               fk.LocallyConnected2D(4, 3, activation="tanh", **zeros),
                               keras.layers.Flatten(), fk.MaskedDense(8, mask, **zeros),
                               fk.BandedDense(1, 3, 3, **zeros)]), x_img),
            (keras.Sequential([keras.Input((5, 3)), fk.LocallyConnected1D(4, 2, **zeros),
                               fk.LSTM(6, return_sequences=True, **zeros_rnn),
                               fk.GRU(5, **zeros_rnn), keras.layers.Dense(1, **zeros)]),
             x_seq)]
        for model, x in models:
            for layer in model.layers:
                randomize(layer)
            model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
            before = [w.copy() for w in model.get_weights()]
            loss0 = model.evaluate(x, target, verbose=0)
            model.fit(x, target, batch_size=16, epochs=1, verbose=0)     # one step
            loss1 = model.evaluate(x, target, verbose=0)
            assert loss1 < loss0, (loss0, loss1)
            for layer in model.layers:
                for v in layer.trainable_variables:
                    old = before[[id(w) for w in model.weights].index(id(v))]
                    new = numpy_of(v)
                    if isinstance(layer, fk.MaskedDense) and v is layer.kernel:
                        assert np.array_equal(new[~mask], old[~mask])   # never used
                        new, old = new[mask], old[mask]
                    assert not np.array_equal(new, old), f"{layer.name}/{v.name} unchanged"

    def doctests():
        import doctest
        result = doctest.testmod(fk, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.attempted >= 10 and result.failed == 0, result

    return {"conv2d": (conv2d, BACKENDS), "lstm": (lstm, BACKENDS), "gru": (gru, BACKENDS),
            "banded_and_masked_dense": (dense_like, BACKENDS),
            "locally_connected_vs_keras2": (locally_connected, BACKENDS),
            "config_round_trip": (config_round_trip, BACKENDS),
            "bad_arguments": (bad_arguments, ("numpy",)),
            "fit_step": (fit_step, TRAINING), "doctests": (doctests, ("numpy", "torch"))}


CHECKS = {"conv2d": BACKENDS, "lstm": BACKENDS, "gru": BACKENDS,
          "banded_and_masked_dense": BACKENDS, "locally_connected_vs_keras2": BACKENDS,
          "config_round_trip": BACKENDS, "bad_arguments": ("numpy",), "fit_step": TRAINING,
          # (on jax the examples' random initialisers compile one program per shape)
          "doctests": ("numpy", "torch")}


def _run_worker():
    results = {}
    checks = _worker_checks()
    assert {k: v[1] for k, v in checks.items()} == CHECKS
    for name, (fn, backends) in checks.items():
        if keras.backend.backend() not in backends:
            continue
        try:
            start = time.perf_counter()
            fn()
            results[name] = "ok"
            print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        except BaseException:           # reported by the test of that check
            results[name] = traceback.format_exc()
    print("RESULTS " + json.dumps(results))


# ------------------------------------------------------------------ tests
_WORKERS = {}
_RESULTS = {}


def _start_workers():
    """One interpreter per installed backend, started together (they mostly wait on
    imports and compilers, so they overlap well)."""
    for backend in BACKENDS:
        if backend not in _WORKERS and importlib.util.find_spec(backend) is not None:
            env = dict(os.environ, KERAS_BACKEND=backend)
            _WORKERS[backend] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), backend], cwd=HERE, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(backend):
    if backend not in _RESULTS:
        _start_workers()
        if backend not in _WORKERS:
            pytest.skip(f"the {backend} backend is not installed")
        proc = _WORKERS[backend]
        try:
            stdout, stderr = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("RESULTS ")]
        assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
        _RESULTS[backend] = json.loads(lines[-1][len("RESULTS "):])
    return _RESULTS[backend]


@pytest.mark.parametrize("backend,check", [(b, c) for c, bs in CHECKS.items() for b in bs])
def test_keras_layers(backend, check):
    result = _results(backend)[check]
    assert result == "ok", result


def test_not_imported_by_fastnn():
    code = "import sys, fastnn; print('fastnn.keras' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]


def test_import_error_names_the_extra():
    code = ("import sys; sys.modules['keras'] = None\n"
            "try:\n    import fastnn.keras\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert 'pip install "fastnn[keras]"' in out.stdout


def test_import_error_for_a_backend_that_does_not_load():
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "try:\n    import fastnn.keras\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert "KERAS_BACKEND" in out.stdout and 'pip install "fastnn[keras]"' in out.stdout


if __name__ == "__main__":
    assert keras.backend.backend() == sys.argv[1], (keras.backend.backend(), sys.argv[1])
    _run_worker()
