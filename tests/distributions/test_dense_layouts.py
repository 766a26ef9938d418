"""Dense outputs in torch's channels-first layout are refused with the remedy.

The likelihoods read classes and parameter pairs from the last dimension of
``(S, B, ..., C)``. A segmentation network ending with a convolution returns
``(S, B, C, H, W)``; moving dimension 1 last on that output (torch's habit)
moves the batch. The messages named neither the ``movedim`` that fixes the
output nor, where the batch ended last, the mix-up (probe dense).
"""

from __future__ import annotations

import pytest
import torch

import pyrolite_bnn as bnn

S, C, H, W = 3, 4, 8, 8


def _network(classes: int) -> bnn.VIConv2d:
    """A one-layer segmentation network: (B, 3, H, W) to (S, B, classes, H, W)."""
    return bnn.VIConv2d(3, classes, 3, padding=1)


def test_logits_with_the_batch_moved_last_name_dimension_2() -> None:
    """``out.movedim(1, -1)`` on ``(S, B, C, H, W)`` with ``B != C``."""
    batch = 3
    net, loss_fn = _network(C), bnn.KullbackLeiblerLoss(bnn.Categorical(), 30)
    x, labels = torch.randn(batch, 3, H, W), torch.randint(0, C, (batch, H, W))
    out = net(x, samples=S)
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)") as refused:
        loss_fn(out.movedim(1, -1), labels)
    message = str(refused.value)
    assert "The batch seems to be the last dimension" in message
    assert "out.movedim(2, -1)" in message
    assert "logits.movedim(1, -1)" in message
    assert "as many examples in a batch as classes" in message
    assert loss_fn(out.movedim(2, -1), labels).isfinite()


def test_logits_in_torch_layout_name_both_movedims() -> None:
    """``(S, B, C, H, W)`` against ``(B, H, W)``: inside forward dimension 1,
    on the output dimension 2, and not dimension 1 there."""
    net, loss_fn = _network(C), bnn.KullbackLeiblerLoss(bnn.Categorical(), 30)
    x, labels = torch.randn(2, 3, H, W), torch.randint(0, C, (2, H, W))
    with pytest.raises(ValueError, match=r"The classes are the last") as refused:
        loss_fn(net(x, samples=S), labels)
    message = str(refused.value)
    assert "`return logits.movedim(1, -1)`" in message
    assert "out.movedim(2, -1), not out.movedim(1, -1)" in message
    assert "The batch seems" not in message


def test_batch_moved_last_with_as_many_examples_as_classes_is_not_detected() -> None:
    """The trap the docs describe: with ``B == C`` the wrong logits have the
    expected shape and score each image's labels against logits gathered
    from every image. Nothing refuses them (no check can tell from shapes);
    this pins the documented limitation."""
    net, loss_fn = _network(C), bnn.KullbackLeiblerLoss(bnn.Categorical(), 40)
    x, labels = torch.randn(C, 3, H, W), torch.randint(0, C, (C, H, W))
    out = net(x, samples=S)
    assert loss_fn(out.movedim(1, -1), labels).isfinite()  # accepted
    likelihood = bnn.Categorical()
    wrong = likelihood.log_likelihood(out.movedim(1, -1), labels)
    right = likelihood.log_likelihood(out.movedim(2, -1), labels)
    assert wrong.shape == right.shape == (S, C)
    assert not torch.allclose(wrong, right)


def test_heteroscedastic_pair_in_dimension_2_names_movedim() -> None:
    likelihood = bnn.HeteroscedasticNormal()
    target = torch.randn(2, H, W)
    channels_first = torch.randn(S, 2, 2, H, W)
    with pytest.raises(ValueError, match=r"got \(3, 2, 2, 8, 8\)\. The \(mean, raw"):
        likelihood.log_likelihood(channels_first, target)
    with pytest.raises(ValueError, match=r"out\.movedim\(2, -1\), not out\.movedim"):
        likelihood.moments(channels_first)  # the summaries refuse it alike
    moved = likelihood.log_likelihood(channels_first.movedim(2, -1), target)
    assert moved.shape == (S, 2)


def test_heteroscedastic_pair_first_on_images_two_wide_names_movedim() -> None:
    """``(S, B, 2, H, 2)``: the last dimension has two entries, so the output
    passes the output check, and the targets' shape error named no remedy
    (probe falsepos24b). Where the targets fit the channels-first reading,
    the movedim is named; where they do not, the plain message stays."""
    likelihood = bnn.HeteroscedasticNormal()
    channels_first = torch.randn(S, 4, 2, H, 2)
    target = torch.randn(4, H, 2)
    with pytest.raises(
        ValueError, match=r"expected targets of shape \(4, 2, 8\)\. The \(mean, raw"
    ) as refused:
        likelihood.log_likelihood(channels_first, target)
    assert "out.movedim(2, -1), not out.movedim(1, -1)" in str(refused.value)
    moved = likelihood.log_likelihood(channels_first.movedim(2, -1), target)
    assert moved.shape == (S, 4)
    with pytest.raises(ValueError, match=r"expected targets of shape \(4, 2, 8\)$"):
        likelihood.log_likelihood(channels_first, torch.randn(4, 3, 2))


def test_heteroscedastic_output_of_another_kind_keeps_the_plain_message() -> None:
    """Three values in the last dimension and none in dimension 2: no hint."""
    with pytest.raises(ValueError, match=r"got \(3, 2, 8, 3\)$"):
        bnn.HeteroscedasticNormal().log_likelihood(
            torch.randn(S, 2, 8, 3), torch.randn(2, 8)
        )
