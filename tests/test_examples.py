"""Run every examples/*.py end to end, each in its own Python process.

An example declares what it needs beyond NumPy and fastnn on a comment line right after
its module docstring::

    # requires: sklearn, torch

Names are import names or their distribution names (``scikit-learn`` means
``sklearn``), separated by commas or spaces; version specifiers are ignored. An
example whose requirement cannot be imported here is skipped, naming it; the line may
be empty (``# requires:``) or absent when an example needs nothing extra. Each
example runs with this interpreter, in a fresh temporary directory, for at most
120 s, and must exit with status 0. An example that prints ``test_accuracy=<value>``
on a line of its own is also held to the minimum accuracy listed in MIN_ACCURACY.
"""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# A leading underscore marks a module the examples share, not an example.
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 120

# Distribution (or common) names whose import name differs.
IMPORT_NAMES = {
    "scikit-learn": "sklearn", "scikit_learn": "sklearn", "pytorch": "torch",
    "tensorflow-cpu": "tensorflow", "pillow": "PIL", "opencv-python": "cv2",
    "pyyaml": "yaml", "jax[cpu]": "jax",
}

MIN_ACCURACY = {"numpy_lenet_digits.py": 0.95, "numpy_lstm_classifier.py": 0.9}

_REQUIRES = re.compile(r"^#\s*requires:(.*)$", re.IGNORECASE)
_ACCURACY = re.compile(r"^test_accuracy=([0-9.eE+-]+|nan)\s*$", re.MULTILINE)


def requirements(path):
    """The import names an example's ``# requires:`` line lists (none when absent)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _REQUIRES.match(line.strip())
        if match:
            names = []
            for item in re.split(r"[,\s]+", match.group(1).strip()):
                if not item:
                    continue
                key = item.lower()
                if key not in IMPORT_NAMES:
                    key = re.match(r"[A-Za-z0-9_.\-]*", item).group(0).lower()
                names.append(IMPORT_NAMES.get(key, key.replace("-", "_")))
            return names
    return []


def missing(names):
    absent = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent


def test_examples_present():
    names = {p.name for p in EXAMPLES}
    assert {"numpy_lenet_digits.py", "numpy_lstm_classifier.py"} <= names, names
    assert (EXAMPLES_DIR / "_shared.py").exists() and "_shared.py" not in names


def test_requirements_parsing(tmp_path):
    cases = {
        '"""Doc."""\n# requires: sklearn, torch\nimport numpy\n': ["sklearn", "torch"],
        '"""Doc."""\n# requires: scikit-learn jax>=0.4\n': ["sklearn", "jax"],
        '"""Doc."""\n# requires:\n': [],
        '"""Doc."""\nimport numpy\n': [],
    }
    for i, (text, want) in enumerate(cases.items()):
        path = tmp_path / f"example_{i}.py"
        path.write_text(text)
        assert requirements(path) == want, text
    assert missing(["sys", "no_such_module_here_xyz"]) == ["no_such_module_here_xyz"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    absent = missing(requirements(path))
    if absent:
        pytest.skip(f"{path.name} requires {', '.join(absent)}, not installed")
    try:
        proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        pytest.fail(f"{path.name} ran past {TIMEOUT_S} s; last output:\n{out[-2000:]}")
    report = f"stdout (tail):\n{proc.stdout[-3000:]}\nstderr (tail):\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{path.name} exited with status {proc.returncode}\n{report}"
    minimum = MIN_ACCURACY.get(path.name)
    if minimum is not None:
        found = _ACCURACY.findall(proc.stdout)
        assert found, f"{path.name} printed no test_accuracy= line\n{report}"
        accuracy = float(found[-1])
        assert accuracy >= minimum, f"{path.name}: test accuracy {accuracy} < {minimum}"
