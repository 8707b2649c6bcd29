"""Batching documents by length, and what the padding costs.

Block-sparse attention lays its blocks out over the padded input: the last global block, the window and the random
blocks of a document padded to 4096 tokens are not those of the same document padded to 1024, so padding changes a
summary. `LengthBuckets` therefore batches only documents whose inputs pad to the same length -- their length
rounded up to a multiple of `multiple` tokens, the model's block size by default -- and pads each batch to exactly
that length: a document gets the same summary in every batch, in every order, on every process, as alone. Batches
fill as documents stream in, so memory stays bounded by one partial batch per length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass
from typing import Generic, TypeVar

from .summarize import batches as input_order_batches  # consecutive items: the order of the input
from .summarize import padded_length

__all__ = ["LengthBuckets", "PaddingStats", "input_order_batches"]

Item = TypeVar("Item")


class LengthBuckets(Generic[Item]):
    """Groups items by padded length: `add` returns a full batch as soon as one length has `batch_size` items;
    `rest` returns the partial batches at the end, longest first."""

    def __init__(self, batch_size: int, multiple: int, length: Callable[[Item], int]):
        self.batch_size = batch_size
        self.multiple = multiple
        self.length = length
        self._buckets: dict[int, list[Item]] = {}

    def add(self, item: Item) -> list[Item] | None:
        width = padded_length(self.length(item), self.multiple)
        bucket = self._buckets.setdefault(width, [])
        bucket.append(item)
        if len(bucket) < self.batch_size:
            return None
        return self._buckets.pop(width)

    def rest(self) -> list[list[Item]]:
        batches = [self._buckets[width] for width in sorted(self._buckets, reverse=True)]
        self._buckets.clear()
        return batches

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        for item in items:
            batch = self.add(item)
            if batch is not None:
                yield batch
        yield from self.rest()


@dataclass
class PaddingStats:
    """Input tokens and the padding added to them by batching, and what input-order batches would have added."""

    documents: int = 0
    batches: int = 0
    tokens: int = 0
    padding: int = 0
    input_order_padding: int = 0

    def add_batch(self, lengths: list[int], multiple: int) -> None:
        self.documents += len(lengths)
        self.batches += 1
        self.tokens += sum(lengths)
        self.padding += batch_padding(lengths, multiple)

    def add_input_order(self, lengths_in_order: list[int], batch_size: int, multiple: int) -> None:
        self.input_order_padding += sum(batch_padding(lengths, multiple)
                                        for lengths in input_order_batches(lengths_in_order, batch_size))

    def __add__(self, other: PaddingStats) -> PaddingStats:
        return PaddingStats(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other))))

    @property
    def overhead(self) -> float:
        """Padding as a share of the input tokens."""
        return self.padding / self.tokens if self.tokens else 0.0

    @property
    def input_order_overhead(self) -> float:
        return self.input_order_padding / self.tokens if self.tokens else 0.0


def batch_padding(lengths: list[int], multiple: int) -> int:
    """Padding tokens of one batch padded to its longest input rounded up to `multiple`."""
    return len(lengths) * padded_length(max(lengths), multiple) - sum(lengths)
