"""Sphinx configuration for fastnn's documentation (build: .ci/docs)."""
import ast
import importlib.util
import os
import sys
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# Keras picks its backend when first imported: take one that is installed.
if "KERAS_BACKEND" not in os.environ:
    for _backend in ("torch", "jax"):
        if importlib.util.find_spec(_backend) is not None:
            os.environ["KERAS_BACKEND"] = _backend
            break

import fastnn  # noqa: E402  (the installed package: the API pages document it)

project = "fastnn"
author = "the fastnn developers"
copyright = "2026, the fastnn developers"
release = fastnn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]

root_doc = "index"
highlight_language = "none"    # literal blocks are shell or text; Python ones say so
exclude_patterns = ["_build"]
templates_path = []
nitpicky = False

autosummary_generate = False        # the tables link to autodoc entries on the same page
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"          # the numpydoc Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"fastnn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []
html_show_sourcelink = False

# ---- the adapters' API pages need their frameworks --------------------------------
# An adapter whose framework is not installed gets a note instead of its entries;
# FASTNN_DOCS_ALL=1 (a complete build, e.g. for publishing) makes that a warning, so
# that -W fails.
ADAPTER_FRAMEWORKS = {"fastnn.torch": "torch", "fastnn.jax": "jax", "fastnn.keras": "keras",
                      "fastnn.thinc": "thinc"}


# ---- the examples gallery ----------------------------------------------------------
def _example_info(path):
    """(title, rest of the docstring, requirements) of an example script."""
    source = path.read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    title, _, body = doc.partition("\n")
    requires = ""
    for line in source.splitlines():
        if line.lower().startswith("# requires:"):
            requires = line.split(":", 1)[1].strip()
            break
    return title.strip() or path.stem, body.strip(), requires


class ExampleGallery(SphinxDirective):
    """``.. fastnn-examples::``: one section per examples/*.py -- its docstring, what it
    needs, and the whole script as a literal block. The scripts are not run here (the
    test suite runs them); a new script appears without editing the docs."""

    def run(self):
        scripts = sorted(EXAMPLES.glob("*.py"))
        if not scripts:
            logging.getLogger(__name__).warning("no examples found in %s", EXAMPLES)
        here = Path(self.env.doc2path(self.env.docname)).parent
        lines = []
        for path in scripts:
            title, body, requires = _example_info(path)
            heading = f"{path.name}: {title}"
            needs = (f"Needs: ``{requires}`` (besides NumPy and fastnn)." if requires
                     else "Needs nothing besides NumPy and fastnn.")
            rel = os.path.relpath(path, here).replace(os.sep, "/")
            lines += [heading, "-" * len(heading), "", *body.splitlines(), "", needs, "",
                      f".. literalinclude:: {rel}", "   :language: python", ""]
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source="examples/"), container)
        return container.children


# ---- API pages: one directive per module -------------------------------------------
class ModuleAPI(SphinxDirective):
    """``.. fastnn-api:: fastnn.conv``: the module's docstring, a summary table and the
    entry of every name in its ``__all__``, so a new public function appears without
    editing the docs. Names that ``import fastnn`` exports are documented under
    ``fastnn.`` (as users call them), the rest under the module."""

    required_arguments = 1

    def run(self):
        import importlib
        modname = self.arguments[0]
        framework = ADAPTER_FRAMEWORKS.get(modname)
        if framework and importlib.util.find_spec(framework) is None:
            message = (f"{modname} is documented when {framework} is installed "
                       f"(pip install \"fastnn[{framework}]\"); this build had no {framework}.")
            if os.environ.get("FASTNN_DOCS_ALL") == "1":
                logging.getLogger(__name__).warning(message)
            else:
                print("note: " + message, file=sys.stderr)
            return [nodes.note("", nodes.paragraph(text=message))]
        module = importlib.import_module(modname)
        names = list(getattr(module, "__all__", []))
        lines = [f".. automodule:: {modname}", ""]
        # Names another fastnn module defines (fastnn.banded re-exports fastnn.local's)
        # are documented on that module's page: here, a pointer to it.
        reexported = {}
        for name in names:
            home_module = getattr(getattr(module, name), "__module__", modname)
            if home_module != modname and home_module.startswith("fastnn."):
                reexported.setdefault(home_module, []).append(name)
        for home_module, group in reexported.items():
            listed = ", ".join(f"``{name}``" for name in group)
            lines += [f"Also importable from ``{modname}``: {listed} (see :mod:`{home_module}`).",
                      ""]
            names = [name for name in names if name not in group]
        groups = []   # (module the names are documented under, names)
        for name in names:
            home = "fastnn" if getattr(fastnn, name, None) is getattr(module, name) else modname
            if not groups or groups[-1][0] != home:
                groups.append((home, []))
            groups[-1][1].append(name)
        for home, group in groups:
            lines += [f".. currentmodule:: {home}", "", ".. autosummary::", ""]
            lines += [f"   {name}" for name in group] + [""]
        for home, group in groups:
            lines += [f".. currentmodule:: {home}", ""]
            for name in group:
                obj = getattr(module, name)
                if isinstance(obj, type):
                    lines += [f".. autoclass:: {name}", ""]
                    if modname.startswith(("fastnn.torch", "fastnn.jax", "fastnn.keras",
                                           "fastnn.thinc")):
                        continue    # framework classes: their own docstring is the API
                    lines += ["   :members:", ""]
                elif callable(obj):
                    lines += [f".. autofunction:: {name}", ""]
                else:
                    lines += [f".. autodata:: {name}", "   :no-value:", ""]
        container = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source=modname), container)
        return container.children


def _check_public_api_documented(app, env):
    """Every name ``import fastnn`` exports has an API entry (a warning, so -W fails)."""
    documented = set(env.domains["py"].objects)
    for name in fastnn.__all__:
        if name.startswith("__") or name == "convert":
            continue
        if f"fastnn.{name}" not in documented:
            logging.getLogger(__name__).warning(
                "fastnn.%s is public but has no API entry: add its module to docs/api/", name)


def _numpydoc_warnings_to_sphinx():
    """numpydoc reports a docstring it cannot parse (an unknown section, whose text it
    then drops) with warnings.warn, which Sphinx's -W does not see: log them as Sphinx
    warnings, every time."""
    import warnings
    logger = logging.getLogger("numpydoc")
    default = warnings.showwarning
    seen = set()    # numpydoc parses a docstring more than once: report it once

    def show(message, category, filename, lineno, file=None, line=None):
        if "numpydoc" in str(filename):
            if str(message) not in seen:
                seen.add(str(message))
                logger.warning("numpydoc: %s", message)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.filterwarnings("always", category=UserWarning, module="numpydoc")


def setup(app):
    _numpydoc_warnings_to_sphinx()
    app.add_directive("fastnn-examples", ExampleGallery)
    app.add_directive("fastnn-api", ModuleAPI)
    app.connect("env-check-consistency", _check_public_api_documented)
    return {"parallel_read_safe": True}
