"""Run the examples in every public docstring of the installed fastnn package."""
import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import fastnn

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(fastnn.__path__, "fastnn.")
    if not name.startswith("fastnn._bench") and name != "fastnn.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with np.printoptions(legacy=False):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                                 verbose=False)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


def test_doctests_exist():
    # The public modules carry examples; an empty collection would hide a broken walk.
    total = 0
    finder = doctest.DocTestFinder()
    for name in MODULES:
        total += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert total >= 8
