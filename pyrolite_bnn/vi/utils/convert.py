"""torch_blue's ``convert_to_vimodule``: an alias of :func:`pyrolite_bnn.convert`."""

from __future__ import annotations

from typing import Any

from torch import nn

from pyrolite_bnn.convert import convert
from pyrolite_bnn.module import VIModule

__all__ = ["convert_to_vimodule"]


def convert_to_vimodule(
    module: nn.Module,
    keep_weights: bool = False,
    variational_distribution: Any = None,
    prior: Any = None,
    rescale_prior: bool = False,
    kaiming_initialization: bool = True,
    prior_initialization: bool = False,
    return_log_probs: bool = True,
) -> VIModule:
    """torch_blue's conversion of a ``torch.nn`` model, with its arguments.

    Differences from torch_blue: the model is not changed in place; the
    Bayesian network is *returned* (use ``net = vi.convert_to_vimodule(net)``).
    Layers are converted by :func:`pyrolite_bnn.convert` (the layer registry),
    not by class name, and a custom class keeps its ``forward`` without
    ``torch.vmap``. With ``keep_weights=True`` the posterior means are the
    module's weights; otherwise every converted layer is re-initialised
    (``reset_parameters``, torch's initialisation).

    Args:
        module: the ``torch.nn`` model.
        keep_weights: start the posterior means at the module's weights.
        variational_distribution: must be ``None`` (the mean-field Normal) here;
            torch_blue's distribution objects are not translated.
        prior: must be ``None`` (standard Normal prior) here.
        rescale_prior: must be ``False`` here.
        kaiming_initialization: accepted (layers use torch's initialisation).
        prior_initialization: must be ``False`` here.
        return_log_probs: whether the network returns log probabilities
            (``out.log_probs``).

    Raises:
        NotImplementedError: for the torch_blue options not translated here
            (use :func:`pyrolite_bnn.convert`'s ``prior=``/``variational=``).

    Example:
        >>> import torch
        >>> from pyrolite_bnn import vi
        >>> net = vi.convert_to_vimodule(torch.nn.Linear(2, 3), keep_weights=True)
        >>> net
        VILinear(in_features=2, out_features=3, bias=True)
        >>> net(torch.randn(4, 2), samples=5).shape
        torch.Size([5, 4, 3])
    """
    del kaiming_initialization  # torch's own initialisation is used
    if (
        variational_distribution is not None
        or prior is not None
        or rescale_prior
        or prior_initialization
    ):
        raise NotImplementedError(
            "vi.convert_to_vimodule translates keep_weights and return_log_probs "
            "only; for other priors or variational families use "
            "pyrolite_bnn.convert(module, prior=..., variational=...)"
        )
    network = convert(module)
    if not keep_weights:
        for layer in network.modules():
            if isinstance(layer, VIModule) and layer.declared_variables():
                reset = getattr(layer, "reset_parameters", None)
                if callable(reset):
                    reset()
    network.return_log_probs = return_log_probs
    return network
