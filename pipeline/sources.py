"""Where a job's examples come from: all held in memory, or streamed chunk by chunk.

The training loop (:mod:`pipeline.train`) asks a source for three things: one epoch's
minibatches (through the step, so each d2l code draws them its own way), the data chunk by
chunk for the full-data sums of the epoch metrics, and the least-squares reference.

- :class:`MemorySource`: d2l's ``synthetic_data``: the n examples drawn at once and held; an
  epoch is one permutation of all n (d2l's ``data_iter``, the ``DataLoader``'s shuffle).
- :class:`StreamSource`: chunk i (``data.chunk_size`` examples) is drawn from its own
  generator, seeded from (seed, i), so any chunk can be drawn again for another pass (the epoch
  metrics, the least-squares statistics, the next epoch) instead of being stored: at most a
  chunk is held, whatever n is. A stream cannot be permuted as a whole: an epoch visits the
  chunks in order and shuffles within each (the examples are iid, so the chunk order carries
  no information); a batch never straddles two chunks (``data.chunk_size`` is a multiple of B).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from pipeline.data import NormalEquations, chunk_generator, ols, synthetic_data
from pipeline.steps import Batch, EpochOrder, ShuffledChunk, Step

Chunk = tuple[torch.Tensor, torch.Tensor]  # X (m, d), y (m, 1)


class DataSource(Protocol):
    true_w: torch.Tensor
    true_b: float

    @property
    def n(self) -> int: ...

    @property
    def held_bytes(self) -> int:
        """The most bytes of examples (X and y) the source holds at once."""
        ...

    def epoch(
        self, step: Step, gen: torch.Generator, batch_size: int, drop_last: bool
    ) -> Iterator[Batch]:
        """One epoch's minibatches, drawn by ``step``, shuffled with ``gen``."""
        ...

    def chunks(self) -> Iterator[Chunk]:
        """Every example once, in chunks (the whole data is one chunk in memory)."""
        ...

    def ols(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, b) of the least-squares fit of all n examples."""
        ...

    def mse(self, w: torch.Tensor, b: torch.Tensor) -> float:
        """Mean squared error of the model (w, b) on all n examples."""
        ...


@dataclass
class MemorySource:
    """All n examples in memory (what ``python -m pipeline`` always did)."""

    X: torch.Tensor
    y: torch.Tensor  # (n, 1)
    true_w: torch.Tensor
    true_b: float

    @property
    def n(self) -> int:
        return len(self.X)

    @property
    def held_bytes(self) -> int:
        return self.X.nbytes + self.y.nbytes

    def epoch(
        self, step: Step, gen: torch.Generator, batch_size: int, drop_last: bool
    ) -> Iterator[Batch]:
        # one randperm per epoch: d2l's data_iter order, and the DataLoader's
        order = EpochOrder(torch.randperm(self.n, generator=gen), batch_size, drop_last)
        return step.batches(self.X, self.y, order)

    def chunks(self) -> Iterator[Chunk]:
        yield self.X, self.y

    def ols(self) -> tuple[torch.Tensor, torch.Tensor]:
        return ols(self.X, self.y)

    def mse(self, w: torch.Tensor, b: torch.Tensor) -> float:
        return float(((self.X @ w + b - self.y.reshape(-1)) ** 2).mean())


class StreamSource:
    """n examples drawn chunk by chunk, never all held (see the module doc)."""

    def __init__(
        self,
        true_w: torch.Tensor,
        true_b: float,
        n: int,
        noise: float,
        seed: int,
        chunk_size: int,
        outlier_fraction: float = 0.0,
        outlier_scale: float = 0.0,
    ):
        self.true_w, self.true_b, self.noise, self.seed = true_w, true_b, noise, seed
        self._n, self.chunk_size = n, min(chunk_size, n)
        self.outlier_fraction, self.outlier_scale = outlier_fraction, outlier_scale
        self.num_chunks = -(-n // self.chunk_size)
        self._moments: NormalEquations | None = None  # AᵀA, Aᵀy, from the first full pass

    @property
    def n(self) -> int:
        return self._n

    @property
    def held_bytes(self) -> int:
        itemsize = self.true_w.element_size()
        return self.chunk_size * (len(self.true_w) + 1) * itemsize

    def chunk(self, i: int) -> Chunk:
        """Chunk i, drawn from its own generator: the same examples on every pass. Outliers,
        if any, are a fraction of each chunk."""
        m = min(self.chunk_size, self.n - i * self.chunk_size)
        return synthetic_data(
            self.true_w,
            self.true_b,
            m,
            self.noise,
            chunk_generator(self.seed, i),
            self.outlier_fraction,
            self.outlier_scale,
        )

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk in order, each drawn only when the previous one has been used. The
        first complete pass also sums the normal equations, so the least-squares reference
        needs no pass of its own."""
        moments = None
        if self._moments is None:
            moments = NormalEquations(len(self.true_w))
        for i in range(self.num_chunks):
            X, y = self.chunk(i)
            if moments is not None:
                moments.add(X, y)
            yield X, y
        if moments is not None:
            self._moments = moments

    def shuffled(
        self, gen: torch.Generator, batch_size: int, drop_last: bool
    ) -> Iterator[ShuffledChunk]:
        """One epoch: the chunks in order, each with a permutation of its own examples."""
        for X, y in self.chunks():
            yield X, y, EpochOrder(torch.randperm(len(X), generator=gen), batch_size, drop_last)

    def epoch(
        self, step: Step, gen: torch.Generator, batch_size: int, drop_last: bool
    ) -> Iterator[Batch]:
        return step.stream_batches(self.shuffled(gen, batch_size, drop_last))

    def moments(self) -> NormalEquations:
        """The normal equations of all n examples (a pass over the chunks, unless one was
        already made)."""
        if self._moments is None:
            for _ in self.chunks():
                pass
        assert self._moments is not None
        return self._moments

    def ols(self) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self.moments().solve()
        return w.to(self.true_w.dtype), b.to(self.true_w.dtype)

    def mse(self, w: torch.Tensor, b: torch.Tensor) -> float:
        """From the sufficient statistics: no pass over the data."""
        return self.moments().mse(w, b)

    def materialise(self) -> MemorySource:
        """The same n examples, all in memory (for checks on small n: both sources must give
        the same least-squares fit and, with one chunk, the same training)."""
        parts = list(self.chunks())
        X = torch.cat([X for X, _ in parts])
        y = torch.cat([y for _, y in parts])
        return MemorySource(X, y, self.true_w, self.true_b)
