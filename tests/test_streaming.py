"""Data sources: the in-memory source keeps the loop's batches, the stream never holds more
than a chunk, every engine trains the same on a stream, and least squares from streamed
sufficient statistics is the in-memory least squares."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import pipeline.train
from pipeline.config import ConfigError, validate
from pipeline.data import make_generators
from pipeline.memory import peak_rss
from pipeline.sources import Chunk, MemorySource, StreamSource
from pipeline.steps import make_step
from pipeline.train import History, make_source, train
from tests.conftest import compose_cfg
from tests.test_stacked import assert_same

STREAM = ("data=stream", "data.chunk_size=1000", "train.epochs=2", "optim.lr=0.1")
ENGINES = {
    "scratch": ("model=scratch", "train.engine=d2l"),
    "linear": ("model=linear", "train.engine=d2l"),
    "stacked": ("train.engine=stacked",),
}


def stream_of(*overrides: str) -> StreamSource:
    cfg = compose_cfg(*STREAM, *overrides)
    source = make_source(cfg, make_generators(cfg.seed))
    assert isinstance(source, StreamSource)
    return source


@pytest.mark.parametrize("outliers", ["data.outliers.fraction=0.0", "data.outliers.fraction=0.1"])
def test_streamed_least_squares_is_the_in_memory_least_squares(outliers: str) -> None:
    stream = stream_of("data.n=2500", outliers)  # chunks of 1000, 1000 and 500
    assert [len(X) for X, _ in stream.chunks()] == [1000, 1000, 500]
    w_stream, b_stream = stream.ols()  # AᵀA, Aᵀy summed chunk by chunk
    memory = stream.materialise()
    w_memory, b_memory = memory.ols()  # lstsq on the same 2500 examples at once
    np.testing.assert_allclose(w_stream, w_memory, rtol=0, atol=1e-10)
    assert float(b_stream) == pytest.approx(float(b_memory), abs=1e-10)
    # its training MSE from the same statistics (yᵀy − 2θᵀAᵀy + θᵀAᵀAθ)/n
    assert stream.mse(w_stream, b_stream) == pytest.approx(memory.mse(w_memory, b_memory), rel=1e-8)


def test_streamed_least_squares_is_minimum_norm_past_the_interpolation_threshold() -> None:
    stream = stream_of("data.n=50", "data.zero_features=60")  # d + 1 = 63 > n
    w_stream, b_stream = stream.ols()
    w_memory, b_memory = stream.materialise().ols()  # gelsd's minimum-norm solution
    np.testing.assert_allclose(w_stream, w_memory, rtol=0, atol=1e-10)
    assert float(b_stream) == pytest.approx(float(b_memory), abs=1e-10)
    assert stream.mse(w_stream, b_stream) < 1e-12  # it fits the 50 examples exactly


def test_a_chunk_is_the_same_on_every_pass_and_its_own() -> None:
    stream = stream_of("data.n=2500")
    first, again = list(stream.chunks()), list(stream.chunks())
    for (X1, y1), (X2, y2) in zip(first, again, strict=True):
        assert torch.equal(X1, X2) and torch.equal(y1, y2)
    assert torch.equal(stream.chunk(1)[0], first[1][0])  # drawn alone, without chunk 0
    assert not torch.equal(first[0][0], first[1][0])
    other = stream_of("data.n=2500", "seed=1")
    assert not torch.equal(other.chunk(0)[0], first[0][0])


def test_memory_source_batches_are_the_permuted_data() -> None:
    """The in-memory source cuts one randperm per epoch into batches, as the loop always did."""
    config = compose_cfg("train.batch_size=300", "train.engine=stacked")
    source = make_source(config, make_generators(0))
    assert isinstance(source, MemorySource)
    theta0 = torch.zeros(1, 3, dtype=torch.float64)
    perm = torch.randperm(1000, generator=make_generators(0).batches)
    for engine, model in (("stacked", "linear"), ("scratch", "scratch"), ("linear", "linear")):
        step = make_step(engine, [compose_cfg(f"model={model}", "train.batch_size=300")], theta0)
        batches = list(source.epoch(step, make_generators(0).batches, 300, drop_last=False))
        expected = perm.split(300)
        assert [len(b[0]) for b in batches] == [300, 300, 300, 100]
        for (Xb, yb), idx in zip(batches, expected, strict=True):
            X = Xb[:, :2] if engine == "stacked" else Xb  # the stacked step gets A = [X, 1]
            y = -yb if engine == "stacked" else yb  # and -y, for one addmm per batch
            assert torch.equal(X, source.X[idx]) and torch.equal(y, source.y[idx])


def watch_chunks(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """Record the size of every chunk drawn, and how many chunks were alive at each draw."""
    sizes: list[int] = []
    alive_at_draw: list[int] = []
    refs: list[weakref.ref[torch.Tensor]] = []
    draw = StreamSource.chunk

    def chunk(self: StreamSource, i: int) -> Chunk:
        alive_at_draw.append(sum(r() is not None for r in refs))
        X, y = draw(self, i)
        sizes.append(len(X))
        refs.append(weakref.ref(X))
        return X, y

    monkeypatch.setattr(StreamSource, "chunk", chunk)
    return sizes, alive_at_draw


def test_every_engine_trains_the_same_on_a_stream_one_chunk_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # n = 2550 in chunks of 1000 (the last one partial), B = 50 with the last partial batch
    # dropped: batches never straddle chunks, the update count is the in-memory one
    overrides = ("data.n=2550", "train.batch_size=50", "train.drop_last=true")
    sizes, alive = watch_chunks(monkeypatch)
    hists: dict[str, History] = {}
    for engine, options in ENGINES.items():
        sizes.clear()
        hists[engine] = train([compose_cfg(*STREAM, *overrides, *options)])[0]
        # initial metrics (with the OLS statistics), 2 epochs, 2 epoch metrics: 5 passes
        assert sizes == [1000, 1000, 550] * 5
    assert max(alive) <= 1  # when a chunk is drawn, at most the previous one is still held
    assert hists["scratch"].updates == 2 * (2550 // 50)
    for engine in ("linear", "stacked"):
        assert_same(hists[engine], hists["scratch"])
        np.testing.assert_allclose(hists[engine].w_hat, hists["scratch"].w_hat, rtol=1e-9)
        assert hists[engine].ols_w_error == hists["scratch"].ols_w_error
    assert hists["scratch"].data_mb == 1000 * 3 * 8 / 1e6  # one chunk of (x1, x2, y) float64
    assert hists["scratch"].epochs["w_error"][-1] < 1e-2


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_one_chunk_stream_trains_exactly_like_its_examples_in_memory(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one chunk, the stream's within-chunk shuffle is the in-memory epoch permutation:
    the streaming code path (generator, IterableDataset, per-chunk views) must give the same
    bits as the in-memory one on the same examples."""
    cfg = compose_cfg(*STREAM, "data.n=1000", "train.batch_size=30", *ENGINES[engine])
    streamed = train([cfg])[0]
    held = stream_of("data.n=1000").materialise()

    def in_memory(*args: object) -> MemorySource:
        return held

    monkeypatch.setattr(pipeline.train, "make_source", in_memory)
    memory = train([cfg])[0]
    assert memory.w_hat == streamed.w_hat and memory.b_hat == streamed.b_hat
    assert memory.epochs == streamed.epochs and memory.batch_loss == streamed.batch_loss
    assert memory.ols_w_error == pytest.approx(streamed.ols_w_error, rel=1e-9)
    assert memory.data_mb == streamed.data_mb


def test_stream_config_is_checked_and_named() -> None:
    with pytest.raises(ConfigError, match=r"^data.chunk_size=1000: must be a multiple of"):
        validate(compose_cfg(*STREAM, "data.n=5000", "train.batch_size=300"))
    validate(compose_cfg(*STREAM, "data.n=900", "train.batch_size=300"))  # one chunk: any B
    with pytest.raises(ConfigError, match=r"^data.chunk_size=0: must be >= 1"):
        validate(compose_cfg("data.chunk_size=0"))
    assert compose_cfg("data.source=stream").data.source.value == "stream"
    from pipeline.identity import run_name

    assert "-sourcestream-" in run_name(compose_cfg("data=stream"))


def test_peak_rss_sees_an_allocation_inside_the_block() -> None:
    def allocate() -> Iterator[None]:
        big = torch.ones(40_000_000 // 8, dtype=torch.float64)  # 40 MB, touched
        yield
        del big

    with peak_rss() as rss:
        list(allocate())
    assert rss.peak_mb - rss.start_mb > 35
    assert set(rss.metrics()) == {"peak_rss_mb", "rss_start_mb"}
