"""Sphinx configuration of the pyrolite_bnn documentation.

Build it as CI does::

    python -m sphinx -W --keep-going -q -b html docs docs/_build/html
"""

from __future__ import annotations

import pyrolite_bnn

project = "pyrolite_bnn"
author = "the pyrolite_bnn developers"
copyright = "the pyrolite_bnn developers"
version = pyrolite_bnn.__version__
release = pyrolite_bnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
# design.md is the canonical Markdown design document; design.rst renders it.
exclude_patterns = ["_build", "design.md", "Thumbs.db", ".DS_Store"]

nitpicky = False
highlight_language = "python3"

# autodoc: every object is documented once, in the module that defines it.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_class_signature = "mixed"

# napoleon: Google-style docstrings. Attributes become :ivar: fields, so that an
# "Attributes:" section never duplicates an attribute autodoc also documents.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"pyrolite_bnn {release}"
html_static_path: list[str] = []

# ``-b doctest`` runs the testcode examples of the user guide. Docstring examples
# (plain ``>>>`` blocks) need their module's namespace; pytest runs them
# (``--doctest-modules``), so the doctest builder skips them.
doctest_test_doctest_blocks = ""


def _public_name_target(app, env, node, contnode):  # type: ignore[no-untyped-def]
    """Resolve ``pyrolite_bnn.X`` (and ``pyrolite_bnn.X.method``) references.

    Users and the guides name objects as the package exports them
    (``bnn.KullbackLeiblerLoss``); autodoc documents each in its defining module
    (``pyrolite_bnn.loss.KullbackLeiblerLoss``). A reference to the exported
    name is redirected to the documented one.
    """
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("pyrolite_bnn."):
        return None
    parts = target.split(".")
    for split in range(len(parts), 0, -1):  # the longest importable prefix
        module_name = ".".join(parts[:split])
        try:
            obj = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        break
    else:
        return None
    defining = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if defining is None or qualname is None:
        return None
    canonical = f"{defining}.{qualname}"
    if canonical == target:
        return None
    domain = env.get_domain("py")
    new = node.deepcopy()
    new["reftarget"] = canonical
    builder = app.builder
    return domain.resolve_xref(
        env, node.get("refdoc"), builder, node.get("reftype"), canonical, new, contnode
    )


def setup(app):  # type: ignore[no-untyped-def]
    """Register the exported-name resolver."""
    app.connect("missing-reference", _public_name_target)
