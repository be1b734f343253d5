"""The endpoint pool's bookkeeping: least-loaded choice, backoff, probing back in, no healthy endpoint.

The clients here are plain objects and the probe a function of the test: the pool's
own logic is under test; the real servers are in ``test_triton.py``.
"""

from __future__ import annotations

import pytest

from engines.backends._triton_pool import EndpointPool, endpoint_states, parse_endpoint
from engines.errors import EngineUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Client:
    def __init__(self, url: str) -> None:
        self.url, self.closed = url, False

    def close(self) -> None:
        self.closed = True


def _pool(urls: list[str], down: set[str], clock: Clock, max_inflight: int = 2) -> EndpointPool:
    def probe(url: str, client: Client) -> None:
        if url in down:
            raise ConnectionRefusedError(f"{url} refused")

    pool = EndpointPool("m", urls, max_inflight, Client, probe, clock)
    pool.probe_due(force=True)
    return pool


def test_least_loaded_healthy_endpoint_and_slots() -> None:
    clock = Clock()
    pool = _pool(["grpc://a:1", "grpc://b:1"], set(), clock)
    taken = [pool.acquire(1.0) for _ in range(4)]
    assert sorted(e.url for e, _ in taken) == ["grpc://a:1", "grpc://a:1", "grpc://b:1", "grpc://b:1"]
    with pytest.raises(EngineUnavailable, match="no free slot"):
        pool.acquire(0.0)
    first, client = taken[0]
    pool.release(first, client, 0.5)
    endpoint, _ = pool.acquire(1.0)
    assert endpoint is first  # the only one with a free slot
    [state] = [s for s in pool.states() if s.url == first.url]
    assert state.in_flight == 2 and state.requests == 1 and state.latency_seconds == 0.5
    pool.close()


def test_failed_endpoint_backs_off_and_is_probed_back_in() -> None:
    clock, down = Clock(), set()
    pool = _pool(["grpc://a:1", "http://b:2"], down, clock)
    a = pool.endpoints[0]
    down.add(a.url)
    pool.mark_down(a, "Connection refused")
    assert [s.healthy for s in pool.states()] == [False, True]

    def use() -> str:
        endpoint, client = pool.acquire(1.0)
        pool.release(endpoint, client, 0.1)
        return endpoint.url

    assert {use() for _ in range(3)} == {"http://b:2"}
    clock.now += 1.0  # due: probed, still refused, backoff doubles
    use()
    assert not a.healthy and a.backoff == 2.0 and a.errors == 2 and a.last_error == "grpc://a:1 refused"
    down.clear()
    clock.now += 1.0  # not yet due
    use()
    assert not a.healthy
    clock.now += 1.0
    use()
    assert a.healthy and len(a.free) == 2 and any(s.url == a.url and s.healthy for s in endpoint_states())
    pool.close()
    assert all(s.url not in ("grpc://a:1", "http://b:2") for s in endpoint_states())


def test_no_healthy_endpoint_is_unavailable_naming_each() -> None:
    pool = _pool(["grpc://a:1", "grpc://b:1"], {"grpc://a:1", "grpc://b:1"}, Clock())
    with pytest.raises(EngineUnavailable, match=r"no Triton endpoint serving model 'm' is healthy "
                                                 r"\(grpc://a:1: grpc://a:1 refused; grpc://b:1: grpc://b:1 refused\)"):
        pool.acquire(1.0)
    pool.close()


@pytest.mark.parametrize("url", ["gpu1:8001", "grpc://gpu1", "ftp://gpu1:21", "http://gpu1:8000/v2"])
def test_bad_endpoint_urls_are_named(url: str) -> None:
    with pytest.raises(ValueError, match=f"Triton endpoint '{url}'"):
        parse_endpoint(url)
    assert parse_endpoint("grpcs://gpu1.example:8001") == ("grpc", "gpu1.example:8001", True)
