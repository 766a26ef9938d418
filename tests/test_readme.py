"""The README's Python blocks run as written, in order, in one namespace."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

import pyrolite_bnn as bnn

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_quick_start() -> None:
    assert len(_python_blocks()) >= 2


def test_readme_python_blocks_run(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    for block in _python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == ["tensor([1, 0])", "torch.Size([2])", "True"]
    assert printed[3] == "torch.Size([4, 10, 8])"
    assert isinstance(namespace["loss"], torch.Tensor)


def test_api_overview_lists_every_public_name() -> None:
    """The overview claims to list the whole API; 24 names had gone missing."""
    overview = (ROOT / "docs" / "api" / "pyrolite_bnn.rst").read_text()
    # ``name`` literally, the target of a :class:`~...name` role, or autodoc
    missing = [
        name
        for name in bnn.__all__
        if f"``{name}``" not in overview
        and f".{name}`" not in overview
        and f":: pyrolite_bnn.{name}\n" not in overview
    ]
    assert missing == []


def test_design_module_tables_name_every_module() -> None:
    """design.md and design.rst list the package's modules (they had drifted)."""
    package = ROOT / "pyrolite_bnn"
    names = sorted(
        p.name for p in package.glob("*.py") if p.name != "__init__.py"
    ) + sorted(f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists())
    for doc, quote in (("design.md", "`"), ("design.rst", "``")):
        text = (ROOT / "docs" / doc).read_text()
        assert [n for n in names if f"{quote}{n}{quote}" not in text] == [], doc


def test_the_memory_probe_is_described_as_the_code_runs_it() -> None:
    """concepts.rst said "the first 4 inputs, one particle" for a probe of two
    particles, measured by forward hooks (it counts every allocation), and
    left out that a probe that raises runs again (the user's forward code
    runs up to 3 times in a predict call of one chunk)."""
    predict_module = importlib.import_module("pyrolite_bnn.predict")
    probe = (
        f"first {predict_module._PROBE_INPUTS} inputs with "
        f"{predict_module._PROBE_PARTICLES} particles"
    )
    for text in ((ROOT / "docs" / "concepts.rst").read_text(), bnn.predict.__doc__):
        assert text is not None
        flat = " ".join(text.split())
        assert probe in flat
        assert "probed again" in flat or "probe runs again" in flat
    concepts = " ".join((ROOT / "docs" / "concepts.rst").read_text().split())
    assert "forward code runs up to twice before the prediction's own calls" in concepts


def test_howto_names_every_weight_layout_a_condition_accepts() -> None:
    """howto.rst said a value conditioned on a weight site must have the
    weight's own shape or ``(S, 1, *shape)``, "any other shape is refused";
    ``(1, *shape)`` and ``(1, 1, *shape)`` are accepted (they broadcast to
    every particle, probe29)."""
    from pyro import poutine

    samples, shape = 3, (2, 4)
    pyro_model = bnn.KullbackLeiblerLoss(bnn.Categorical(), 10).pyro_model(
        bnn.VILinear(4, 2)
    )
    accepted = []
    for leading in [(), (1,), (1, 1), (samples, 1), (samples,), (1, 1, 1), (2, 1)]:
        value = torch.zeros(*leading, *shape)
        conditioned = poutine.condition(pyro_model, data={"weight": value})
        try:
            conditioned(torch.randn(5, 4), samples=samples)
        except ValueError:
            continue
        names = ["S" if size == samples else str(size) for size in leading]
        accepted.append("(" + ", ".join([*names, "*shape"]) + ")")
    assert accepted == ["(*shape)", "(1, *shape)", "(1, 1, *shape)", "(S, 1, *shape)"]
    howto = " ".join((ROOT / "docs" / "howto.rst").read_text().split())
    paragraph = howto.split("*Condition a weight.*")[1].split("*Reparameterise")[0]
    assert [a for a in accepted if f"``{a}``" not in paragraph] == []


def test_howto_says_which_estimator_losses_coupling_examples_need() -> None:
    """howto.rst said a differentiated call makes "every particle one network".

    Flipout, which ``"auto"`` runs there, gives each example (row) its own
    weight draw: a physics loss coupling rows (``u(0) - u(1)``) trained
    another objective. The section now says so and names the remedies
    (tests/test_statistical.py checks that they share one draw).
    """
    howto = (ROOT / "docs" / "howto.rst").read_text()
    section = howto.split("Differentiate with respect to the inputs\n")[1]
    section = section.split("Differentiate with respect to the parameters")[0]
    text = " ".join(section.split())
    assert "Every particle is then one network" not in text
    coupling = text.split("*Losses that couple examples.*")[1]
    assert 'estimator="reparam"' in coupling
    assert "bnn.draw_networks" in coupling
