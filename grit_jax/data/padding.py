"""Right padding of token rows to one length: the one definition for the pipeline and GritLM."""

import numpy as np


def right_pad(rows, length: int, pad_id: int, dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [len(rows), length], valid [len(rows), length] bool) of rows cut at `length`."""
    tokens = np.full((len(rows), length), pad_id, dtype)
    valid = np.zeros((len(rows), length), bool)
    for i, row in enumerate(rows):
        n = min(len(row), length)
        tokens[i, :n] = row[:n]
        valid[i, :n] = True
    return tokens, valid
