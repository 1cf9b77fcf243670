"""Static typing of the installed package: the fastnn_ext stubs match the compiled
modules (mypy's stubtest), every public function of the Python layer is annotated
(inspect), mypy checks small user scripts against fastnn (the README's calls, and the
type of every public function's result), and mypy checks the Python layer itself with
pyproject.toml's [tool.mypy] settings.

Skips when mypy is not installed (it is in the ``test`` extra). mypy runs in a
subprocess, in a temporary folder, on the fastnn that this interpreter imports.
"""
import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

pytest.importorskip("mypy")

import fastnn_ext  # noqa: E402

ALLOWLIST = Path(__file__).resolve().parent / "stubtest-allowlist.txt"
TIMEOUT_S = 600


def _env():
    """mypy finds an installed package in site-packages by itself; a source checkout
    installed in editable mode is reached through an import hook mypy cannot follow,
    so its folder goes on MYPYPATH (mypy refuses site-packages there)."""
    env = dict(os.environ)
    root = str(Path(fastnn_ext.__file__).resolve().parent.parent)
    if "site-packages" not in root and "dist-packages" not in root:
        env["MYPYPATH"] = root + (os.pathsep + env["MYPYPATH"] if env.get("MYPYPATH") else "")
    return env


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    """One cache for the module's mypy runs: NumPy's stubs are analysed once."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(tmp_path, cache, source, *options):
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    # Errors inside fastnn itself are silenced, as they are for any installed package;
    # what is checked is the user's code against fastnn's annotations and stubs.
    return _run(["mypy", "--cache-dir", str(cache), "--follow-imports=silent",
                 "--show-error-codes", "--no-color-output", *options, str(script)], tmp_path)


def test_stubtest(tmp_path):
    proc = _run(["mypy.stubtest", "fastnn_ext", "--allowlist", str(ALLOWLIST)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


USER_SCRIPT = """
    import numpy as np
    import fastnn
    from fastnn import convert

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = fastnn.conv2d(x, w, padding="same")
    grad_x, grad_w, grad_b = fastnn.conv2d_backward(np.ones_like(y), x, w, padding="same")
    pooled = fastnn.max_pool2d(fastnn.relu(y), 2)
    loss = fastnn.softmax_cross_entropy(pooled.reshape(2, -1), np.array([0, 1]))
    kernel, bias = convert.lstm_from_torch(np.zeros((8, 3)), np.zeros((8, 2)),
                                           np.zeros(8), np.zeros(8))
    outputs, (h_t, c_t) = fastnn.lstm(rng.standard_normal((1, 5, 3)), np.zeros((1, 2)),
                                      np.zeros((1, 2)), kernel, bias, forget_bias=0.0)
    with fastnn.threads(1):
        y1 = fastnn.conv2d([[[[1.0]]]], [[[[2.0]]]])
    fastnn.set_num_threads(None)
    version: str = fastnn.__version__
    print(version, y.shape, grad_x, grad_w, grad_b, loss, outputs, h_t, c_t, y1,
          fastnn.get_num_threads())

    # The README's "API at a glance".
    xt = x.transpose(0, 2, 3, 1)
    yt = fastnn.conv2d(xt, w.transpose(2, 3, 1, 0), padding="same", layout="NHWC")
    p, idx = fastnn.max_pool2d(y, 2, return_indices=True)
    gp = fastnn.max_pool2d_backward(np.ones_like(p), y, 2, indices=idx)
    up = fastnn.conv_transpose2d(p, np.zeros((4, 4, 3, 3), np.float32), stride=2, padding=1,
                                 output_padding=1)
    h = rng.standard_normal((2, 16)).astype(np.float32)
    z = fastnn.banded_matmul(h, rng.standard_normal((16, 16)).astype(np.float32), 8, 8)
    seq = rng.standard_normal((2, 5, 3)).astype(np.float32)
    out, (hT, cT), cache = fastnn.lstm(seq, None, None, np.zeros((3 + 4, 16), np.float32),
                                       np.zeros(16, np.float32), training=True)
    grads = fastnn.lstm_backward(np.ones_like(out), None, None, cache)
    fastnn.set_num_threads(2); fastnn.get_num_threads()
    with fastnn.threads(1) as n:
        assert n == 1
    fastnn.show_config()
    print(yt.shape, gp.sum(), up.shape, z.shape, hT + cT, grads[0].shape, cache.T,
          p.reshape(-1), idx.ravel())
"""


def test_user_script_type_checks(tmp_path, mypy_cache):
    # Typical use (lists as well as arrays, "same" padding, tuples unpacked, the thread
    # context manager) is accepted: fastnn is found as a typed package (py.typed) and
    # its annotations are not narrower than what the functions accept.
    proc = _mypy(tmp_path, mypy_cache, USER_SCRIPT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout, proc.stdout


def test_stubs_are_seen_by_mypy(tmp_path, mypy_cache):
    # The compiled modules are typed through their .pyi stubs: a wrong call is an error
    # (with no stub, mypy would report the module as untyped, or see Any and accept it).
    proc = _mypy(tmp_path, mypy_cache, """
        import numpy as np
        from fastnn_ext import _activations, _runtime
        _activations.relu(np.zeros(3), np.zeros(3), "two")
        _runtime.no_such_function()
    """)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'Argument 3 to "relu" has incompatible type "str"; expected "int"' in proc.stdout, \
        proc.stdout
    assert "no_such_function" in proc.stdout and "[attr-defined]" in proc.stdout, proc.stdout
    assert "import-untyped" not in proc.stdout and "import-not-found" not in proc.stdout, \
        proc.stdout


# ---- every public function and class of the Python layer is annotated ---------------
PUBLIC_MODULES = ["fastnn", "fastnn.conv", "fastnn.pooling", "fastnn.banded", "fastnn.local",
                  "fastnn.recurrent", "fastnn.activations", "fastnn.convert", "fastnn._threads"]
# Public names outside any __all__ (reached as fastnn._threads.pool_info, or through
# show_config).
EXTRA_PUBLIC = [("fastnn._threads", "pool_info"), ("fastnn._threads", "blas_info"),
                ("fastnn._threads", "threads_for"), ("fastnn._config", "config"),
                ("fastnn._config", "show_config")]


def _public_callables():
    seen = {}
    names = [(m, n) for m in PUBLIC_MODULES for n in importlib.import_module(m).__all__]
    for modname, name in names + EXTRA_PUBLIC:
        obj = getattr(importlib.import_module(modname), name)
        if isinstance(obj, type):
            members = [("__init__", obj.__init__)] + [
                (attr, fn) for attr, fn in vars(obj).items()
                if inspect.isfunction(fn) and (not attr.startswith("_") or attr == "__repr__")]
            for attr, fn in members:
                seen.setdefault(id(fn), (f"{obj.__module__}.{name}.{attr}", fn))
        elif inspect.isfunction(obj):
            seen.setdefault(id(obj), (f"{obj.__module__}.{obj.__qualname__}", obj))
    return sorted(seen.values(), key=lambda item: item[0])


PUBLIC_CALLABLES = _public_callables()


def test_public_callables_found():
    names = {name for name, _ in PUBLIC_CALLABLES}
    assert {"fastnn.conv.conv2d", "fastnn.pooling.max_pool1d",
            "fastnn.banded.PreparedMask.__init__", "fastnn.recurrent.RecurrentCache.__init__", "fastnn.convert.lstm_to_keras",
            "fastnn._threads.threads", "fastnn._config.show_config"} <= names
    assert len(PUBLIC_CALLABLES) > 70


@pytest.mark.parametrize("name,fn", PUBLIC_CALLABLES, ids=[n for n, _ in PUBLIC_CALLABLES])
def test_public_function_is_annotated(name, fn):
    # Every parameter and the return carry an annotation (an unannotated function is
    # Any to a type checker: no errors, no completion), and the annotations resolve
    # (the names they use exist; evaluating "X | Y" needs Python 3.10).
    sig = inspect.signature(fn)
    missing = [p.name for p in sig.parameters.values()
               if p.annotation is inspect.Parameter.empty and p.name != "self"]
    assert not missing, f"{name}: parameters without annotations: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"
    if sys.version_info >= (3, 10):
        hints = typing.get_type_hints(fn)
        assert set(hints) == {p for p in sig.parameters if p != "self"} | {"return"}, name


# ---- what mypy infers for each public function's result -----------------------------
REVEALED = """
    from typing import Any, Optional, Tuple
    import numpy as np
    import numpy.typing as npt
    from typing_extensions import assert_type
    import fastnn
    from fastnn import convert
    from fastnn.banded import PreparedMask

    F = npt.NDArray[np.floating[Any]]
    G3 = Tuple[Optional[F], Optional[F], Optional[F]]
    G5 = Tuple[F, F, F, F, F]
    x = np.zeros((1, 1, 4, 4))
    w = np.zeros((1, 1, 3, 3))
    x1, w1 = x[..., 0], w[..., 0]
    c = fastnn.RecurrentCache()
    m = fastnn.prepare_mask(np.eye(2, dtype=bool))

    assert_type(fastnn.conv2d(x, w, stride=(1, 1), padding=((1, 1), (0, 0))), F)
    assert_type(fastnn.conv2d_backward(x, x, w, padding="same"), G3)
    assert_type(fastnn.conv1d(x1, w1, padding=(1,)), F)
    assert_type(fastnn.conv1d_backward(x1, x1, w1), G3)
    assert_type(fastnn.conv_transpose2d(x, w, output_padding=(0, 0)), F)
    assert_type(fastnn.conv_transpose2d_backward(x, x, w), G3)
    assert_type(fastnn.im2col(x, 3), F)
    assert_type(fastnn.col2im(x, x.shape, (3, 3)), F)
    assert_type(fastnn.flip_kernel(w), F)

    assert_type(fastnn.max_pool2d(x, 2), F)
    assert_type(fastnn.max_pool2d(x, (2,), return_indices=True),
                Tuple[F, npt.NDArray[np.int64]])
    assert_type(fastnn.max_pool1d(x1, 2, return_indices=False), F)
    assert_type(fastnn.max_pool1d(x1, 2, return_indices=True), Tuple[F, npt.NDArray[np.int64]])
    assert_type(fastnn.max_pool2d_backward(x, x, 2, indices=None), F)
    assert_type(fastnn.max_pool1d_backward(x1, x1, 2), F)
    assert_type(fastnn.avg_pool2d(x, 2, stride=(), divisor_override=3), F)
    assert_type(fastnn.avg_pool2d_backward(x, x, 2), F)
    assert_type(fastnn.avg_pool1d(x1, 2, padding="same"), F)
    assert_type(fastnn.avg_pool1d_backward(x1, x1, 2), F)

    for act in (fastnn.relu, fastnn.sigmoid, fastnn.tanh, fastnn.softmax, fastnn.log_softmax):
        assert_type(act(x, out=None), F)
    for back in (fastnn.sigmoid_backward, fastnn.tanh_backward, fastnn.softmax_backward,
                 fastnn.log_softmax_backward, fastnn.relu_backward):
        assert_type(back(x, x), F)
    assert_type(fastnn.leaky_relu(x, 0.1), F)
    assert_type(fastnn.leaky_relu_backward(x, x, 0.1), F)
    assert_type(fastnn.softmax_cross_entropy(x1, [0], ignore_index=-100), F)
    assert_type(fastnn.softmax_cross_entropy_backward(1.0, x1, [0]), F)

    assert_type(fastnn.band_part(w1, 1, 1), F)
    assert_type(fastnn.banded_matmul(x1, w1, 1, 1), F)
    assert_type(fastnn.banded_matmul_backward(x1, x1, w1, 1, 1), Tuple[F, F, Optional[F]])
    assert_type(m, PreparedMask)
    assert_type((m.shape, m.nnz, m.dense), Tuple[Tuple[int, int], int, bool])
    assert_type(fastnn.masked_matmul(x1, w1, m), F)
    assert_type(fastnn.masked_matmul_backward(x1, x1, w1, m), Tuple[F, F, Optional[F]])
    assert_type(fastnn.locally_connected2d(x, w, kernel_size=3), F)
    assert_type(fastnn.locally_connected2d_backward(x, x, w, kernel_size=(3, 3)),
                Tuple[F, F, Optional[F]])
    assert_type(fastnn.locally_connected1d(x1, w1, kernel_size=3), F)
    assert_type(fastnn.locally_connected1d_backward(x1, x1, w1, kernel_size=3),
                Tuple[F, F, Optional[F]])

    assert_type(fastnn.lstm_cell(x1, x1, x1, w1, w1), Tuple[F, F])
    assert_type(fastnn.lstm_cell_backward(None, x1, x1, x1, x1, w1, w1), G5)
    assert_type(fastnn.lstm(x, None, None, w1, w1), Tuple[F, Tuple[F, F]])
    assert_type(fastnn.lstm(x, None, None, w1, w1, return_state=False), F)
    assert_type(fastnn.lstm(x, None, None, w1, w1, training=True),
                Tuple[F, Tuple[F, F], fastnn.RecurrentCache])
    assert_type(fastnn.lstm(x, None, None, w1, w1, return_state=False, training=True),
                Tuple[F, fastnn.RecurrentCache])
    assert_type(fastnn.lstm_backward(x, None, None, c), G5)
    assert_type(fastnn.gru(x, None, w1, w1, w1), Tuple[F, F])
    assert_type(fastnn.gru(x, None, w1, w1, w1, return_state=False), F)
    assert_type(fastnn.gru(x, None, w1, w1, w1, training=True),
                Tuple[F, F, fastnn.RecurrentCache])
    assert_type(fastnn.gru_backward(x, None, c), G5)
    assert_type(fastnn.gru_cell(x1, x1, w1, w1, w1), F)
    assert_type(fastnn.gru_cell_backward(x1, x1, x1, w1, w1, w1), G5)
    assert_type(fastnn.simple_rnn(x, None, w1, w1, w1), Tuple[F, F])
    assert_type(fastnn.simple_rnn(x, None, w1, w1, w1, training=True),
                Tuple[F, F, fastnn.RecurrentCache])
    assert_type(fastnn.simple_rnn_backward(x, None, c), G5)
    assert_type((c.kind, c.T, c.dtype), Tuple[str, int, np.dtype[Any]])

    assert_type(convert.lstm_from_torch(w1, w1, w1, w1), Tuple[F, F])
    assert_type(convert.lstm_to_torch(w1, w1), Tuple[F, F, F, F])
    assert_type(convert.lstm_from_keras(w1, w1, w1), Tuple[F, F])
    assert_type(convert.lstm_to_keras(w1, w1, 3), Tuple[F, F, F])
    assert_type(convert.gru_from_torch(w1, w1, w1, w1), Tuple[F, F, F])
    assert_type(convert.gru_to_torch(w1, w1, w1), Tuple[F, F, F, F])
    assert_type(convert.simple_rnn_from_torch(w1, w1, w1, w1), Tuple[F, F, F])
    assert_type(convert.simple_rnn_to_torch(w1, w1, w1), Tuple[F, F, F, F])

    assert_type(fastnn.set_num_threads(-1), None)
    assert_type(fastnn.get_num_threads(), int)
    with fastnn.threads(None) as n:
        assert_type(n, int)
    assert_type(fastnn.set_coexistence(False), list[str])
    assert_type(fastnn.get_coexistence(), bool)
    assert_type(fastnn.show_config(), None)
    assert_type(fastnn._threads.pool_info(), dict[str, Any])
"""


def test_result_types(tmp_path, mypy_cache):
    # assert_type is exact: a function that loses its annotations (its result is then
    # Any) or whose annotation changes fails here, as does an argument form the
    # docstrings allow that the annotation refuses.
    proc = _mypy(tmp_path, mypy_cache, REVEALED)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wrong_calls_are_reported(tmp_path, mypy_cache):
    proc = _mypy(tmp_path, mypy_cache, """
        import numpy as np
        import fastnn
        x = np.zeros((1, 1, 4, 4))
        fastnn.conv2d(x, x, stride="2")
        fastnn.max_pool2d(x, 2, return_indices=True).reshape(-1)
        fastnn.lstm(x, None, None, x, x, forget_bias="1")
        fastnn.set_num_threads("4")
    """)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert 'Argument "stride" to "conv2d" has incompatible type "str"' in out, out
    assert '"tuple[' in out and 'has no attribute "reshape"' in out, out
    assert 'Argument "forget_bias" to "lstm" has incompatible type "str"' in out or \
        'No overload variant of "lstm" matches' in out, out
    assert 'Argument 1 to "set_num_threads" has incompatible type "str"' in out, out
    assert out.count("error:") == 4, out


# ---- mypy on the Python layer itself ------------------------------------------------
ROOT = Path(fastnn_ext.__file__).resolve().parent.parent
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
CHECKED = ["__init__.py", "_typing.py", "_threads.py", "_config.py", "conv.py", "pooling.py",
           "banded.py", "local.py", "recurrent.py", "activations.py", "convert.py"]


@pytest.mark.skipif(not (ROOT / "fastnn" / "_typing.py").is_file() or not PYPROJECT.is_file()
                    or "site-packages" in str(ROOT) or "dist-packages" in str(ROOT),
                    reason="needs the source checkout (mypy reports no errors inside an "
                           "installed package)")
def test_python_layer_type_checks(tmp_path, mypy_cache):
    # The annotations agree with the code: overloads with their implementation, returns
    # with what the functions return, names in annotations defined (pyproject.toml's
    # [tool.mypy] says which body errors are off, and why).
    files = [str(ROOT / "fastnn" / name) for name in CHECKED]
    proc = _run(["mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(mypy_cache),
                 "--follow-imports=silent", "--show-error-codes", "--no-color-output",
                 *files], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Success: no issues found in {len(CHECKED)} source files" in proc.stdout, proc.stdout
