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
