"""Which outputs of a network :func:`~pyrolite_bnn.predict` reads, by likelihood.

A network returns one tensor, scored by one likelihood, or several (a
multi-task network's heads: ``{"label": logits, "age": mean}`` or a tuple).
For the latter ``predict`` takes one likelihood per head in the same shape, a
dict by key or a tuple/list by position (``None`` skips a position), and
every head is predicted from the same particles: particle ``s`` of one head
and of another are the same network. :class:`OutputHeads` picks the heads out
of each call's output and puts the :class:`~pyrolite_bnn.Prediction` objects
back into the likelihoods' shape.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor

from pyrolite_bnn._likelihoods import as_likelihood
from pyrolite_bnn.distributions.predictive import PredictiveDistribution

__all__ = ["OutputHeads", "describe_heads", "scoring_recipe"]


@dataclass(frozen=True)
class OutputHeads:
    """The heads of a network's output that a prediction reads.

    Attributes:
        likelihoods: one likelihood per head read.
        keys: the heads' dict keys or tuple positions; ``None`` when the
            output is one tensor.
        positions: for a tuple of likelihoods, its length (skipped positions
            included); ``None`` otherwise.

    Example:
        >>> import torch, pyrolite_bnn as bnn
        >>> heads = OutputHeads.of({"label": bnn.Categorical()}, "predict")
        >>> [t.shape for t in heads.pick({"label": torch.zeros(2, 3, 4), "x": 0})]
        [torch.Size([2, 3, 4])]
    """

    likelihoods: tuple[PredictiveDistribution, ...]
    keys: tuple[Hashable, ...] | None
    positions: int | None

    @classmethod
    def of(cls, predictive: object, who: str) -> OutputHeads:
        """The heads ``predictive`` names: one likelihood, a dict or a sequence.

        Raises:
            TypeError: for an entry that is no likelihood (converted as
                :func:`~pyrolite_bnn._likelihoods.as_likelihood` does).
            ValueError: for a dict or sequence that names no head.
        """
        if isinstance(predictive, Mapping):
            keys = tuple(predictive)
            values = [predictive[key] for key in keys]
        elif isinstance(predictive, (tuple, list)):
            keys = tuple(i for i, value in enumerate(predictive) if value is not None)
            values = [predictive[i] for i in keys]
        else:
            return cls((as_likelihood(predictive, who),), None, None)
        if not keys:
            raise ValueError(
                f"{who} needs at least one likelihood, got {predictive!r}: one per "
                "network output to predict"
            )
        likelihoods = tuple(
            as_likelihood(value, f"{who} (output {key!r})")
            for key, value in zip(keys, values, strict=True)
        )
        positions = len(predictive) if isinstance(predictive, (tuple, list)) else None
        return cls(likelihoods, keys, positions)

    @property
    def single(self) -> bool:
        """Whether the network's output is one tensor (one likelihood)."""
        return self.keys is None

    def pick(self, out: Any) -> tuple[Tensor, ...]:
        """The heads of one call's output ``out``, in the likelihoods' order.

        Raises:
            TypeError: if ``out`` is not one tensor (one likelihood), a dict
                (likelihoods by key) or a tuple or list of the likelihoods'
                length (likelihoods by position), or a head is no tensor.
            KeyError: for a key the output does not have.
        """
        if self.keys is None:
            if not isinstance(out, Tensor):
                raise TypeError(
                    "predict needs a network that returns one tensor, got "
                    f"{type(out).__name__}; for a network with several outputs "
                    "(heads), give one likelihood per output in the same shape: "
                    "predict(net, x, {'label': bnn.Categorical(), 'value': "
                    "bnn.Normal()}) for a dict, a tuple for a tuple (None skips "
                    "an output); calibrate takes the targets in that shape too, "
                    "calibrate(net, x, {'label': y}, {'label': bnn.Categorical()})"
                )
            return (out,)
        if self.positions is None:
            if not isinstance(out, Mapping):
                raise TypeError(
                    "predict was given likelihoods by key "
                    f"({', '.join(map(repr, self.keys))}): the network must "
                    f"return a dict, got {type(out).__name__}"
                )
            missing = [key for key in self.keys if key not in out]
            if missing:
                raise KeyError(
                    f"predict was given a likelihood for output(s) "
                    f"{', '.join(map(repr, missing))} that the network does not "
                    f"return (its outputs: {', '.join(map(repr, out))})"
                )
        elif not isinstance(out, (tuple, list)) or len(out) != self.positions:
            got = (
                f"{type(out).__name__} of {len(out)}"
                if isinstance(out, (tuple, list))
                else type(out).__name__
            )
            raise TypeError(
                f"predict was given a sequence of {self.positions} likelihoods (one "
                f"per output, None to skip one): the network must return a tuple "
                f"or list of {self.positions} outputs, got {got}"
            )
        heads = tuple(out[key] for key in self.keys)
        for key, head in zip(self.keys, heads, strict=True):
            if not isinstance(head, Tensor):
                raise TypeError(
                    f"predict needs output {key!r} of the network as a tensor, "
                    f"got {type(head).__name__}"
                )
        return heads

    def per_head(
        self, value: object, what: str, who: str = "predict"
    ) -> tuple[Any, ...]:
        """``value`` as one item per head (``None`` where it names none).

        ``value`` is one item (one likelihood), or a dict or sequence shaped
        like the likelihoods: ``None`` entries and missing keys are ``None``.
        ``what`` names it and ``who`` the function taking it, in the message.

        Raises:
            TypeError: if ``value`` is not shaped like the likelihoods.
        """
        if self.keys is None or value is None:
            return (value,) * len(self.likelihoods)
        if self.positions is None and isinstance(value, Mapping):
            return tuple(value.get(key) for key in self.keys)
        if (
            self.positions is not None
            and isinstance(value, (tuple, list))
            and len(value) == self.positions
        ):
            return tuple(value[cast(int, key)] for key in self.keys)
        shape = (
            "a dict by key"
            if self.positions is None
            else f"a sequence of {self.positions} with None to skip one"
        )
        raise TypeError(
            f"{who} with one likelihood per output takes {what} in the same "
            f"shape ({shape}), got {type(value).__name__}"
        )

    def assemble(self, results: Sequence[Any]) -> Any:
        """``results`` (one per head) in the likelihoods' shape.

        One item for one likelihood; a dict by key; a tuple of the sequence's
        length with ``None`` at the positions skipped.
        """
        if self.keys is None:
            return results[0]
        if self.positions is None:
            return dict(zip(self.keys, results, strict=True))
        shaped: list[Any] = [None] * self.positions
        for key, result in zip(self.keys, results, strict=True):
            shaped[cast(int, key)] = result
        return tuple(shaped)


def describe_heads(output: object) -> tuple[str, list[str]] | None:
    """A network output of several heads, and how the user indexes two of them.

    Returns:
        ``None`` for anything but a dict, tuple or list; else its description
        (``"dict (outputs 'label', 'value')"``) and the expressions reading
        its first heads (``["out['label']", "out['value']"]``, at most two).

    Example:
        >>> describe_heads({"label": 0, "value": 1})
        ("dict (outputs 'label', 'value')", ["out['label']", "out['value']"])
        >>> describe_heads((0, 1, 2))
        ('tuple of 3 outputs', ['out[0]', 'out[1]'])
        >>> describe_heads(0) is None
        True
    """
    if isinstance(output, Mapping):
        keys = list(output)
        listed = ", ".join(map(repr, keys))
        return f"dict (outputs {listed})", [f"out[{key!r}]" for key in keys[:2]]
    if isinstance(output, (tuple, list)):
        name = type(output).__name__
        count = len(output)
        return f"{name} of {count} outputs", [f"out[{i}]" for i in range(min(count, 2))]
    return None


def scoring_recipe(output: object) -> str:
    """How to score the heads of a network ``output`` of several, with losses.

    One loss per head, added, the KL taken by one of them; for one head, the
    loss on that head.

    Example:
        >>> scoring_recipe({"label": 0, "value": 1}).split(", with")[0]
        "one loss per head, loss_a(out['label'], y_a) + loss_b(out['value'], y_b)"
        >>> scoring_recipe((0,))
        'the loss on that output, loss_fn(out[0], y)'
    """
    described = describe_heads(output)
    heads = ["out['a']", "out['b']"] if described is None else described[1]
    if len(heads) == 1:
        return f"the loss on that output, loss_fn({heads[0]}, y)"
    if not heads:
        heads = ["out['a']", "out['b']"]
    return (
        f"one loss per head, loss_a({heads[0]}, y_a) + loss_b({heads[1]}, y_b), "
        "with heat=0 on every loss but one (the forward pass has one KL; see "
        '"Several outputs" in the how-to guide)'
    )
