"""LatencyHistogram: log-linear latency buckets (HdrHistogram's layout) in integer nanoseconds.

Recording is one integer index computation and one list increment, cheap enough for every
request of a load generator; the memory is fixed (a few thousand counters) however long the
run. Each power-of-two range of values is split into ``2 ** (SUB_BUCKET_BITS - 1)`` equal
buckets, so a reported value is within ``1 / 2 ** (SUB_BUCKET_BITS - 1)`` (0.8 %) of the
true one; values below ``2 ** SUB_BUCKET_BITS`` ns are exact. Histograms from several
processes merge by adding their counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUB_BUCKET_BITS = 8
_SUB_BUCKETS = 1 << SUB_BUCKET_BITS
_HALF_BITS = SUB_BUCKET_BITS - 1
# Enough buckets for any non-negative 64-bit nanosecond count (over 500 years).
_MAX_VALUE = (1 << 64) - 1


def bucket_index(value: int) -> int:
    """The bucket holding ``value`` (ns, >= 0)."""
    if value < _SUB_BUCKETS:
        return value
    shift = value.bit_length() - SUB_BUCKET_BITS
    return (shift << _HALF_BITS) + (value >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value (inclusive) that fall into bucket ``index``."""
    if index < _SUB_BUCKETS:
        return index, index
    shift = (index >> _HALF_BITS) - 1
    mantissa = index - (shift << _HALF_BITS)
    return mantissa << shift, ((mantissa + 1) << shift) - 1


BUCKET_COUNT = bucket_index(_MAX_VALUE) + 1


@dataclass
class LatencyHistogram:
    """Counts of latencies (ns) per bucket, with the exact minimum, maximum and sum."""

    counts: list[int]
    total: int = 0
    minimum: int = 0
    maximum: int = 0
    sum: int = 0

    @classmethod
    def empty(cls) -> LatencyHistogram:
        return cls(counts=[0] * BUCKET_COUNT)

    @classmethod
    def from_counts(cls, counts: list[int]) -> LatencyHistogram:
        """A histogram from bare bucket counts (the load generator's hot path keeps only
        those): minimum and maximum are then their buckets' bounds, the sum is taken at
        bucket midpoints, all within the buckets' precision."""
        histogram = cls(counts=counts)
        for index, count in enumerate(counts):
            if count:
                low, high = bucket_bounds(index)
                if histogram.total == 0:
                    histogram.minimum = low
                histogram.maximum = high
                histogram.total += count
                histogram.sum += count * (low + high) // 2
        return histogram

    def record(self, value: int) -> None:
        if value < 0:
            value = 0
        elif value > _MAX_VALUE:
            value = _MAX_VALUE
        self.counts[bucket_index(value)] += 1
        if self.total == 0 or value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        self.total += 1
        self.sum += value

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to this histogram."""
        if other.total == 0:
            return
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.minimum = other.minimum if self.total == 0 else min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.total += other.total
        self.sum += other.sum

    def value_at(self, quantile: float) -> int:
        """The smallest value that at least ``quantile`` (0..1) of the recordings do not exceed.

        Reported as the highest value of its bucket (never above the true maximum), so a
        percentile is never understated.
        """
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be between 0 and 1, not {quantile}")
        if self.total == 0:
            raise ValueError("no values recorded")
        rank = max(1, math.ceil(quantile * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_bounds(index)[1], self.maximum)
        return self.maximum  # unreachable while counts and total agree

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0
