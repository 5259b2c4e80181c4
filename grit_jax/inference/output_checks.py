"""GritLM's outputs checked where they are made: an embedding that is not finite or all zeros, a row with
nothing left to pool after its instruction, logits that are not finite. Each is an OutputError naming the
first bad row, so nothing degenerate is written to a store or scored. The checks are one vectorised
reduction over what the pass already brought to the host; rows are looked at one by one only once one
is known to be bad.
"""

from __future__ import annotations

import numpy as np

from grit_jax.errors import OutputError

WHY_NOT_FINITE = "a non-finite weight, or an overflow in the compute dtype"


class BadRow(OutputError):
    """One row's output cannot be right; `row` is its index among the rows passed, `problem` what is wrong.
    Callers that know the row by another name (a document id) say it with `named`."""

    def __init__(self, row: int, problem: str, name: str | None = None):
        self.row, self.problem = row, problem
        super().__init__(f"{name or f'row {row}'}: {problem}")

    def named(self, name: str) -> BadRow:
        return BadRow(self.row, self.problem, name)

    def shifted(self, rows: np.ndarray | int) -> BadRow:
        """The same error with `row` mapped through an index array (a batch's rows), or moved by an offset."""
        row = int(rows[self.row]) if isinstance(rows, np.ndarray) else self.row + rows
        return BadRow(row, self.problem)


def check_poolable(rows: list[list[int]], skip: int) -> None:
    """Every row keeps a token after the `skip` tokens pooling leaves out (instruction and BOS)."""
    for i, row in enumerate(rows):
        if len(row) <= skip:
            raise BadRow(
                i,
                f"nothing left to embed after the instruction: the row has {len(row)} tokens and the "
                f"instruction (BOS included) takes {skip}; raise max_length or shorten the instruction",
            )


def check_embeddings(embeddings: np.ndarray) -> None:
    """Every row finite and not all zeros."""
    finite = np.isfinite(embeddings).all(axis=-1)
    nonzero = np.any(embeddings != 0, axis=-1)
    if finite.all() and nonzero.all():
        return
    row = int(np.argmin(finite & nonzero))
    if not finite[row]:
        raise BadRow(row, f"the embedding is not finite (NaN or inf): {WHY_NOT_FINITE}")
    raise BadRow(row, "the embedding is all zeros (the model's output for it is zero)")


def check_logits(logits: np.ndarray, step: int) -> None:
    """Every row of [B, V] logits finite, before a token is chosen from them."""
    if np.isfinite(logits).all():
        return
    row = int(np.argmin(np.isfinite(logits).all(axis=-1)))
    raise BadRow(
        row,
        f"the logits for generated token {step} are not finite (NaN or inf): {WHY_NOT_FINITE}",
        f"prompt {row}",
    )
