"""Token buckets: the rate limits, in bounded memory."""

from __future__ import annotations

from probe.serving.buckets import TokenBuckets, retry_after_seconds


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate():
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=5, clock=clock)
    assert [buckets.take("a") for _ in range(5)] == [0.0] * 5
    assert buckets.take("a") == 0.5  # one token refills in half a second
    assert buckets.take("b") == 0.0  # each name has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert retry_after_seconds(0.5) == 1 and retry_after_seconds(2.1) == 3


def test_more_than_a_burst_waits_for_a_full_bucket_and_is_not_refused_forever():
    clock = Clock()
    buckets = TokenBuckets(rate=10, burst=100, clock=clock)
    assert buckets.take("k", 40) == 0.0
    assert buckets.take("k", 500) == 4.0  # 60 tokens left: 4 s to fill up
    clock.now += 4
    assert buckets.take("k", 500) == 0.0
    assert buckets.available("k") == 0


def test_give_back_and_never_a_partial_take():
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=10, clock=clock)
    assert buckets.take("k", 8) == 0.0
    assert buckets.take("k", 5) == 3.0
    assert buckets.available("k") == 2  # the refused take took nothing
    buckets.give_back("k", 8)
    assert buckets.available("k") == 10


def test_memory_is_bounded_and_full_buckets_are_forgotten():
    clock = Clock()
    buckets = TokenBuckets(rate=1, burst=2, max_tracked=100, clock=clock)
    for number in range(1000):
        buckets.take(f"192.0.2.{number}")
    assert len(buckets) == 100
    clock.now += 3  # every bucket is full again
    buckets.take("one more")
    assert len(buckets) == 1
