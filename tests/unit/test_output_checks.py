"""The output checks (grit_jax.inference.output_checks) name the first bad row and what is wrong with it:
a non-finite or all-zero embedding, a row that is all instruction, non-finite logits."""

import numpy as np
import pytest

from grit_jax.errors import OutputError
from grit_jax.inference.output_checks import BadRow, check_embeddings, check_logits, check_poolable


def test_the_first_bad_row_is_named_with_what_is_wrong():
    good = np.ones((4, 3), np.float32)
    check_embeddings(good)
    zero, nan = good.copy(), good.copy()
    zero[2] = 0
    with pytest.raises(BadRow, match="^row 2: the embedding is all zeros"):
        check_embeddings(zero)
    nan[3, 1], zero[1, 0] = np.nan, np.inf
    with pytest.raises(OutputError, match="^row 1: the embedding is not finite"):
        check_embeddings(zero)  # the inf of row 1 comes before the zeros of row 2
    with pytest.raises(BadRow, match="^row 3: the embedding is not finite") as caught:
        check_embeddings(nan)
    assert caught.value.shifted(np.array([5, 6, 7, 9])).row == 9
    assert str(caught.value.shifted(10).named("document 'x'")).startswith("document 'x': the embedding")

    check_poolable([[1, 2, 3], [1, 2]], skip=1)
    with pytest.raises(BadRow, match="^row 1: nothing left to embed .* 2 tokens .* takes 2"):
        check_poolable([[1, 2, 3], [1, 2]], skip=2)

    logits = np.zeros((3, 8), np.float32)
    check_logits(logits, step=0)
    logits[1, 4] = np.nan
    with pytest.raises(BadRow, match="^prompt 1: the logits for generated token 5 are not finite"):
        check_logits(logits, step=5)
