"""Run the examples in every public docstring of the installed fastnn package."""
import doctest
import importlib
import importlib.util
import pkgutil

import numpy as np
import pytest

import fastnn

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(fastnn.__path__, "fastnn.")
    if not name.startswith("fastnn._bench") and name != "fastnn.__main__"
)


# The framework adapters import their framework: their examples run where it is installed.
ADAPTERS = {"fastnn.torch": "torch", "fastnn.jax": "jax", "fastnn.keras": "keras",
            "fastnn.thinc": "thinc"}


def _import(name):
    if name == "fastnn.keras":
        # Keras picks its backend once, at import: test_keras_adapter runs this module's
        # examples in a subprocess per backend.
        pytest.skip("fastnn.keras's examples run per backend in test_keras_adapter")
    framework = ADAPTERS.get(name)
    if framework and importlib.util.find_spec(framework) is None:
        pytest.skip(f"{name} needs {framework}, which is not installed")
    return importlib.import_module(name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = _import(name)
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                 verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


def test_doctests_exist():
    # The public modules carry examples; an empty collection would hide a broken walk.
    total = 0
    finder = doctest.DocTestFinder()
    for name in MODULES:
        if name in ADAPTERS:
            continue
        total += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert total >= 8
