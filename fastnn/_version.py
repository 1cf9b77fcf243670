"""The version of fastnn, in one place.

Read statically by setuptools (``[tool.setuptools.dynamic]`` in pyproject.toml), so a
build never imports the compiled extension, and re-exported as ``fastnn.__version__``.
"""
__version__ = "0.1.0"
