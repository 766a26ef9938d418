"""The progress display of :func:`~pyrolite_bnn.training.fit`.

A tqdm bar per epoch (one line per epoch on stderr without tqdm), shown by one
process only: rank 0 under ``torch.distributed``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sized
from typing import Any

__all__ = ["Progress"]


def _load_tqdm() -> Any:
    """The ``tqdm`` progress-bar class, or ``None`` when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _length(loader: Iterable[Any]) -> int | None:
    """``len(loader)`` where defined (not for every ``IterableDataset`` loader)."""
    if not isinstance(loader, Sized):
        return None
    try:
        return len(loader)
    except TypeError:
        return None


def _format(stats: dict[str, float]) -> dict[str, str]:
    return {name: f"{value:.4g}" for name, value in stats.items()}


class Progress:
    """Per-epoch progress of ``epochs`` epochs over ``loader``.

    Args:
        show: whether to show anything (``progress=`` of ``fit`` on rank 0).
        epochs: number of epochs.
        loader: the training loader (for the bar's length).
    """

    def __init__(self, show: bool, epochs: int, loader: Iterable[Any]) -> None:
        self.show, self.epochs, self.loader = show, epochs, loader
        self.tqdm = _load_tqdm() if show else None
        self.bar: Any = None
        self.start = 0.0

    def begin(self, epoch: int) -> None:
        """Start showing ``epoch``."""
        self.start = time.perf_counter()
        if self.tqdm is not None:
            self.bar = self.tqdm(
                total=_length(self.loader), desc=f"epoch {epoch + 1}/{self.epochs}"
            )

    def step(self, means: dict[str, float]) -> None:
        """One step done; ``means`` are the epoch's running means."""
        if self.bar is not None:
            self.bar.set_postfix(_format(means), refresh=False)
            self.bar.update(1)

    def end(self, epoch: int, shown: dict[str, float], heat: float) -> None:
        """The epoch ended with the statistics ``shown`` (validation included)."""
        if self.bar is not None:
            self.bar.set_postfix({**_format(shown), "heat": f"{heat:g}"})
            self.bar.refresh()
        self.close()
        if self.show and self.tqdm is None:
            stats = " ".join(f"{name}={value:.4g}" for name, value in shown.items())
            print(
                f"epoch {epoch + 1}/{self.epochs}: {stats} heat={heat:g} "
                f"({time.perf_counter() - self.start:.1f}s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Close the bar (also when the epoch or its validation failed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
