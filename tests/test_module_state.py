from __future__ import annotations

import pytest
import torch

from pyrolite_bnn._module_state import buffers_restored


def test_buffers_put_back_after_a_call() -> None:
    norm = torch.nn.BatchNorm1d(2)
    with buffers_restored(norm):
        norm(torch.randn(4, 2))
    assert int(norm.num_batches_tracked) == 0


def test_on_error_only_keeps_a_successful_call_and_undoes_a_failed_one() -> None:
    """``predict`` without a probe: its call counts, a failed one leaves no trace."""
    norm = torch.nn.BatchNorm1d(2)
    with buffers_restored(norm, on_error_only=True):
        norm(torch.randn(4, 2))
    assert int(norm.num_batches_tracked) == 1
    running = norm.running_mean.clone()
    with (
        pytest.raises(ValueError, match="Expected more than 1 value per channel"),
        buffers_restored(norm, on_error_only=True),
    ):
        norm(torch.randn(1, 2))  # counts the batch, then raises
    assert int(norm.num_batches_tracked) == 1
    torch.testing.assert_close(norm.running_mean, running, rtol=0.0, atol=0.0)
