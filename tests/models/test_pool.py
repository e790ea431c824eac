"""`ModelPool`: one load per spec, thread-safe, failures not cached."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from ensemblehub_core.exceptions import ConfigError, ModelLoadError
from ensemblehub_core.models import LoadedModel, ModelSpec
from ensemblehub_core.pool import ModelPool

MakeLoaded = Callable[[ModelSpec], LoadedModel]


class CountingLoader:
    """A fake loader that counts calls per spec and takes a little time, so races would show."""

    def __init__(self, make: MakeLoaded, delay: float = 0.05) -> None:
        self.make, self.delay = make, delay
        self.calls: Counter[ModelSpec] = Counter()
        self._lock = threading.Lock()

    def __call__(self, spec: ModelSpec) -> LoadedModel:
        with self._lock:
            self.calls[spec] += 1
        time.sleep(self.delay)
        return self.make(spec)


def _hammer(pool: ModelPool, specs: list[ModelSpec], threads: int) -> list[LoadedModel]:
    results: list[LoadedModel] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        got = pool.get(specs[i % len(specs)])
        with lock:
            results.append(got)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def test_many_threads_load_one_spec_once(fake_loaded: MakeLoaded) -> None:
    loader = CountingLoader(fake_loaded)
    pool = ModelPool(loader=loader)
    spec = ModelSpec(source="embedded:x")
    results = _hammer(pool, [spec], threads=16)
    assert loader.calls[spec] == 1
    assert all(r is results[0] for r in results)
    assert pool.loaded() == [spec]


def test_each_key_field_makes_its_own_entry(fake_loaded: MakeLoaded) -> None:
    loader = CountingLoader(fake_loaded, delay=0.01)
    pool = ModelPool(loader=loader)
    specs = [
        ModelSpec(source="a"), ModelSpec(source="a", dtype="float32"), ModelSpec(source="a", kind="auto"),
        ModelSpec(source="a", trust_remote_code=True), ModelSpec(source="a", gguf_file="q.gguf"),
        ModelSpec(source="b"),
    ]
    _hammer(pool, specs, threads=24)
    assert set(loader.calls.values()) == {1} and len(loader.calls) == len(specs)
    assert len(pool) == len(specs)


def test_different_specs_load_in_parallel(fake_loaded: MakeLoaded) -> None:
    both_inside = threading.Barrier(2, timeout=5)

    def loader(spec: ModelSpec) -> LoadedModel:
        both_inside.wait()  # raises BrokenBarrierError if the pool serialised the two loads
        return fake_loaded(spec)

    pool = ModelPool(loader=loader)
    results = _hammer(pool, [ModelSpec(source="a"), ModelSpec(source="b")], threads=2)
    assert {r.spec.source for r in results} == {"a", "b"}


def test_a_failed_load_is_not_cached(fake_loaded: MakeLoaded) -> None:
    attempts = []

    def flaky(spec: ModelSpec) -> LoadedModel:
        attempts.append(spec)
        if len(attempts) == 1:
            raise ModelLoadError("disk full")
        return fake_loaded(spec)

    pool = ModelPool(loader=flaky)
    spec = ModelSpec(source="a")
    with pytest.raises(ModelLoadError, match="disk full"):
        pool.get(spec)
    assert pool.loaded() == []
    assert pool.get(spec).spec == spec and len(attempts) == 2


def test_foreign_errors_become_model_load_errors_and_ours_pass_through() -> None:
    def broken(spec: ModelSpec) -> LoadedModel:
        if spec.source == "config":
            raise ConfigError("bad name")
        raise RuntimeError("weights corrupt")

    pool = ModelPool(loader=broken)
    with pytest.raises(ModelLoadError, match="model 'a': RuntimeError: weights corrupt") as err:
        pool.get(ModelSpec(source="a"))
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(ConfigError, match="bad name"):
        pool.get(ModelSpec(source="config"))


def test_evict_clear_and_set_loader(fake_loaded: MakeLoaded) -> None:
    loader = CountingLoader(fake_loaded, delay=0)
    pool = ModelPool()
    pool.set_loader(loader)
    a, b = ModelSpec(source="a"), ModelSpec(source="b")
    first = pool.get(a)
    pool.get(b)
    assert pool.loaded() == [a, b] and a in pool
    pool.evict(a)
    pool.evict(a)  # evicting twice is harmless
    assert pool.loaded() == [b]
    assert pool.get(a) is not first and loader.calls[a] == 2
    pool.clear()
    assert pool.loaded() == [] and len(pool) == 0


def test_default_pool_is_shared() -> None:
    assert ModelPool.default() is ModelPool.default()


@pytest.mark.slow
def test_real_model_is_loaded_once() -> None:
    pool = ModelPool()
    spec = ModelSpec(source="embedded:tiny-random-llama")
    first = pool.get(spec)
    assert pool.get(ModelSpec(source="embedded:tiny-random-llama")) is first
    assert first.model.training is False and first.tokenizer.pad_token is not None
