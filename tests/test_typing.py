"""Static typing of the installed package: the fastnn_ext stubs match the compiled
modules (mypy's stubtest), and mypy checks a small user script against fastnn.

Skips when mypy is not installed (it is in the ``test`` extra). mypy runs in a
subprocess, in a temporary folder, on the fastnn that this interpreter imports.
"""
import os
import subprocess
import sys
import textwrap
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
