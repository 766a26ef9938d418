"""Pyro handlers that would reweigh a log-density computed where they are active.

Around a Pyro model, ``poutine.scale`` multiplies the log-density of every
site, ``poutine.mask`` leaves entries out of it, and a ``pyro.plate`` that
subsamples weighs its sites by ``size / subsample_size``. The PyTorch-style
loss (``loss_fn(out, y)``) computes the ELBO from the network's outputs,
with no Pyro site, so no handler reaches it: under one of those it would
return its plain value, not the one asked for. It refuses instead
(:func:`refuse_reweighing_handlers`). Handlers that leave log-densities as
they are (``poutine.trace``, under which ``pyro.infer.SVI.step`` runs its
loss, ``seed``, ``condition``, ``replay``, a plate without subsampling,
``scale(scale=1.0)``) are no reason to refuse, and neither are handlers set
aside by a computation of the library's own
(:func:`~pyrolite_bnn._handlers.caller_handlers_set_aside`) or kept from the
call by a ``poutine.block`` that hides every site.
"""

from __future__ import annotations

import re

from pyro import poutine
from pyro.poutine.block_messenger import BlockMessenger
from pyro.poutine.mask_messenger import MaskMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message, am_i_wrapped
from pyro.poutine.scale_messenger import ScaleMessenger
from pyro.poutine.subsample_messenger import SubsampleMessenger
from pyro.poutine.trace_messenger import TraceMessenger
from torch import Tensor

from pyrolite_bnn._handlers import computation_handlers

__all__ = [
    "handler_text",
    "refuse_reweighing_handlers",
    "reweighing_handlers",
]

# What a site inside the call would be, for a poutine.block to hide or not: a
# weight (latent) and an observation, under a name no model gives a site.
_PROBE_NAME = "pyrolite_bnn: the PyTorch-style loss"


def reweighing_handlers() -> list[Messenger]:
    """The handlers of the running computation that would reweigh a site here.

    Outermost first. A ``poutine.mask`` whose mask is not ``True`` (a
    tensor mask, whatever its values);
    ``poutine.scale`` handlers and subsampling ``pyro.plate`` contexts,
    unless their factors multiply to 1 (as Pyro multiplies them into a
    site's scale). Handlers outside a ``poutine.block`` that hides every
    site never see a site inside it, and do not count.

    Example:
        >>> import pyro
        >>> with pyro.plate("data", 100, subsample_size=10), poutine.trace():
        ...     [handler_text(handler) for handler in reweighing_handlers()]
        ["pyro.plate('data', 100, subsample_size=10)"]
        >>> with poutine.scale(scale=4.0), poutine.scale(scale=0.25):
        ...     reweighing_handlers()
        []
    """
    if not am_i_wrapped():
        return []
    factor: float | Tensor = 1.0
    found: list[Messenger] = []  # innermost first
    for handler in reversed(computation_handlers()):  # as Pyro applies them
        if isinstance(handler, BlockMessenger) and _hides_every_site(handler):
            break
        if isinstance(handler, ScaleMessenger):
            factor = factor * handler.scale
            found.append(handler)
        elif isinstance(handler, SubsampleMessenger):
            ratio = handler.size / handler.subsample_size
            if _differs_from_one(ratio):
                factor = factor * ratio
                found.append(handler)
        elif isinstance(handler, MaskMessenger) and not _keeps_everything(handler.mask):
            found.append(handler)
    if not _differs_from_one(factor):
        found = [handler for handler in found if isinstance(handler, MaskMessenger)]
    return found[::-1]


def refuse_reweighing_handlers() -> None:
    """Refuse to compute the PyTorch-style loss where a handler would reweigh it.

    Nothing to do, and next to no time taken, where no Pyro handler is
    active (a training step).

    Raises:
        ValueError: naming the handlers of :func:`reweighing_handlers`, with
            what to do instead.
    """
    if not am_i_wrapped():
        return
    handlers = reweighing_handlers()
    if handlers:
        raise ValueError(_refusal(handlers))


def handler_text(handler: Messenger) -> str:
    """How a user writes ``handler``: ``"poutine.scale(scale=0.5)"``, ...

    Example:
        >>> handler_text(poutine.mask(mask=False))
        'poutine.mask(mask=False)'
        >>> handler_text(poutine.trace(param_only=True))
        'poutine.trace(param_only=True)'
        >>> handler_text(poutine.block())
        'poutine.block'
    """
    if isinstance(handler, ScaleMessenger):
        return f"poutine.scale(scale={_value_text(handler.scale)})"
    if isinstance(handler, MaskMessenger):
        return f"poutine.mask(mask={_value_text(handler.mask)})"
    if isinstance(handler, SubsampleMessenger):
        subsample = (
            ""
            if handler.subsample_size == handler.size
            else f", subsample_size={handler.subsample_size}"
        )
        return f"pyro.plate({handler.name!r}, {handler.size}{subsample})"
    if isinstance(handler, TraceMessenger) and handler.param_only:
        return "poutine.trace(param_only=True)"
    name = type(handler).__name__
    function = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Messenger")).lower()
    if function and callable(getattr(poutine, function, None)):
        return f"poutine.{function}"
    return name


def _refusal(handlers: list[Messenger]) -> str:
    """The message refusing the loss under ``handlers``, with what to do instead."""
    advice = []
    scales = [h.scale for h in handlers if isinstance(h, ScaleMessenger)]
    if scales:
        factor = scales[0]
        for scale in scales[1:]:
            factor = factor * scale
        example = "factor" if isinstance(factor, Tensor) else f"{factor:g}"
        advice.append(f"scale the returned loss yourself ({example} * loss_fn(out, y))")
    if any(isinstance(h, MaskMessenger) for h in handlers):
        advice.append(
            "score only the examples to keep, loss_fn(out[:, keep], y[keep]), "
            "or set the targets to leave out to NaN under a likelihood built "
            'with missing="nan"'
        )
    if any(isinstance(h, SubsampleMessenger) for h in handlers):
        advice.append(
            "call the loss outside the subsampling plate: it already weighs "
            "the batch's data term by dataset_size / batch size, as the data "
            "plate of loss_fn.pyro_model(model) does"
        )
    wrappable = [h for h in handlers if not isinstance(h, SubsampleMessenger)]
    if wrappable:
        function, arguments = handler_text(wrappable[0]).split("(", 1)
        advice.append(
            "or put the handler around the Pyro model, "
            f"{function}(loss_fn.pyro_model(model), {arguments}, and train with "
            "pyro.infer.SVI and bnn.Trace_ELBO"
        )
    named = ", ".join(handler_text(handler) for handler in handlers)
    return (
        f"the loss was called inside {named}, which would scale, subsample "
        "or mask the log-density of a Pyro model run there (a tensor mask is "
        "read as masking, whatever its values on this batch); the PyTorch-style loss "
        "computes the ELBO from the network's outputs, with no Pyro site, so "
        "Pyro handlers do not reach it and it would return its value without "
        f"them. Instead, {'; '.join(advice)}"
    )


def _hides_every_site(block: BlockMessenger) -> bool:
    """Whether ``block`` hides a weight site and an observed site alike."""
    return all(bool(block.hide_fn(_probe(observed))) for observed in (False, True))


def _probe(observed: bool) -> Message[..., None]:
    """A sample site of the loss's call, for a block's ``hide_fn`` to judge."""
    return Message(
        type="sample",
        name=_PROBE_NAME,
        fn=lambda *_, **__: None,
        is_observed=observed,
        args=(),
        kwargs={},
        value=None,
        scale=1.0,
        mask=None,
        cond_indep_stack=(),
        done=False,
        stop=False,
        continuation=None,
        infer={},
    )


def _differs_from_one(factor: float | Tensor) -> bool:
    """Whether a scale factor (or any entry of one) is not 1."""
    if isinstance(factor, Tensor):
        return bool((factor != 1).any())
    return bool(factor != 1)


def _keeps_everything(mask: bool | Tensor) -> bool:
    """Whether a mask keeps every entry: ``True``.

    A tensor mask is read as leaving entries out whatever its values: one
    all ``True`` on this batch would let the loss through here and refuse
    it on the next batch that masks an example.
    """
    return mask is True


def _value_text(value: float | bool | Tensor) -> str:
    """A handler's argument as written: ``0.5``, ``False``, ``tensor(...)``."""
    if isinstance(value, Tensor):
        if value.numel() == 1:
            return f"tensor({value.item()!r})"
        return f"<tensor of shape {tuple(value.shape)}>"
    if isinstance(value, bool):
        return repr(value)
    return f"{value:g}"
