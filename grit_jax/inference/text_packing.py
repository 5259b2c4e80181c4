"""How encode lays texts out for its compiled passes: several texts per row (segment ids), few shapes.

Padding each text to a shared length wastes what sits between it and the row's end; sorting by length
and rounding to power-of-two lengths still left a third of grit-embed's slots empty. Here a pass is
R rows of L tokens, L from a short grid (two steps per octave: 16, 24, 32, 48, 64, ...). The longest
text left opens the next row and sets L; the gap after it is filled with the longest texts that still
fit (best fit, shortest texts last), so most rows end full. Attention stays within a text (segment ids)
and positions restart at each text, so a text's embedding is what it would be alone.

Why packing and not only finer buckets: with inference's dense [B,T,T] mask a row costs L^2 in
attention whatever it holds, so rows stay as short as their longest text allows (L within 1.5x of it,
and no shorter than MIN_ROW where there are enough tokens to fill one); the gaps then cost nothing
extra. Finer length buckets alone would need many more compiled shapes (each a compile) and still pad
every batch to its own longest text.

Memory: a pass holds at most `batch_size x row_length(longest text)` token slots, no more than one batch
of today's longest texts (rows of shorter passes are more numerous, R x L stays within that budget).
Row counts are powers of two (then multiples of the mesh's batch split) within that budget, so every
shape is (2^k, a grid length) whatever the call. Where a pass at one row length ends between two of them
it goes on filling rows (with shorter texts) up to the next, so rows of padding only ever end the last,
shortest pass (itself split where that saves most of them): about two shapes per row length.
"""

from __future__ import annotations

import bisect
import dataclasses

import numpy as np

MIN_LENGTH = 16
MIN_ROW = 64  # rows are at least this long where the texts fill one: short texts go several to a row
MAX_SLOTS = 64  # most texts per row: pooling's one-hot is [R, slots, L]


def row_length(n: int) -> int:
    """The smallest row length of the grid >= n: 16, 24, 32, 48, 64, 96, ... (2^k and 1.5 x 2^k)."""
    length = MIN_LENGTH
    while length < n:
        length = length * 3 // 2 if length & (length - 1) == 0 else length // 3 * 4
    return length


def slots(length: int) -> int:
    """Most texts a row of `length` holds (a text has at least two tokens: BOS and one)."""
    return min(length // 2, MAX_SLOTS)


@dataclasses.dataclass(frozen=True)
class Pass:
    """One compiled pass: `rows` (each a list of text indices, laid out in that order) in `row_count`
    rows of `length` tokens (rows beyond len(rows) are padding)."""

    length: int
    rows: list[list[int]]
    row_count: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_count, self.length


class _Remaining:
    """The texts not yet placed, by length: the longest, and the longest that fits a gap."""

    def __init__(self, lengths: np.ndarray):
        order = np.lexsort((-np.arange(len(lengths)), lengths))  # ascending; among equals, input order last
        self.lengths = [int(lengths[i]) for i in order]
        self.index = [int(i) for i in order]

    def __len__(self) -> int:
        return len(self.index)

    def longest(self) -> int:
        return self.lengths[-1]

    def take(self, at_most: int) -> int | None:
        """Removes and returns the longest text of at most `at_most` tokens (None if none)."""
        at = bisect.bisect_right(self.lengths, at_most) - 1
        if at < 0:
            return None
        self.lengths.pop(at)
        return self.index.pop(at)


def pack(lengths, batch_size: int, multiple: int = 1) -> list[Pass]:
    """The passes that encode every text of `lengths` (token counts), longest first. `multiple`: every
    row count is a multiple of it (the mesh's batch split)."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) == 0:
        return []
    budget = batch_size * row_length(int(lengths.max()))
    floor = min(MIN_ROW, row_length(int(lengths.sum())))  # no row longer than all the texts together
    floor = floor if floor <= budget else 0  # nor than the budget
    left, passes = _Remaining(lengths), []
    while len(left):
        length = max(row_length(left.longest()), floor)
        most = 1 << ((budget // length).bit_length() - 1)  # a power of two: the same shapes every call
        most = max(multiple, most // multiple * multiple)
        rows: list[list[int]] = []
        while len(left) and len(rows) < most:
            shorter = max(row_length(left.longest()), floor) < length
            if shorter and _row_count(len(rows), most, multiple) == len(rows):
                break  # the next texts open a pass of shorter rows; this one is a whole shape
            rows.append(_fill_row(left, lengths, length))
        passes += _split(length, rows, most, multiple)
    return passes


def _fill_row(left: _Remaining, lengths: np.ndarray, length: int) -> list[int]:
    """The longest text left, then the longest that fit the space after it, until none does."""
    row = [left.take(left.longest())]
    space = length - int(lengths[row[0]])
    while len(row) < slots(length):
        text = left.take(space)
        if text is None:
            break
        row.append(text)
        space -= int(lengths[text])
    return row


def _split(length: int, rows: list[list[int]], most: int, multiple: int) -> list[Pass]:
    """The passes of `rows` (rows of `length`): one, or where rounding its row count up would leave
    more than 1/8 of it padding (the last pass), whole row counts first (64 + 2 rows, not 128)."""
    passes = []
    while rows:
        count = _row_count(len(rows), most, multiple)
        whole = _row_count(1 << (len(rows).bit_length() - 1), most, multiple)
        if count - len(rows) <= count // 8 or whole >= len(rows):
            return passes + [Pass(length, rows, count)]
        passes.append(Pass(length, rows[:whole], whole))
        rows = rows[whole:]
    return passes


def _row_count(rows: int, most: int, multiple: int) -> int:
    """The compiled row count for `rows` rows: the next power of two, a multiple of `multiple`, at
    most `most` (itself one)."""
    if rows == 0:
        return 0
    power = 1 << (rows - 1).bit_length()
    return min(most, -(-power // multiple) * multiple)


def real_share(lengths, passes: list[Pass]) -> float:
    """The share of the token slots the passes compute that hold a text's token."""
    slots_run = sum(p.row_count * p.length for p in passes)
    return float(np.sum(lengths)) / slots_run if slots_run else 1.0
