"""A batch array is declared in one place (grit_jax.model.batch): a field class with one more array is
checked, placed on the mesh and read by the objective with no other change."""

from typing import Any

import jax
import numpy as np
import pytest
from flax import struct

from grit_jax import sharding
from grit_jax.errors import UsageError
from grit_jax.model.batch import ROW, Batch, PaddedChat, array
from grit_jax.run_config import base_config
from grit_jax.train import step
from grit_jax.train.state import TrainSetup
from grit_jax.train.synthetic import synthetic_batch


@struct.dataclass
class WeightedChat(PaddedChat):
    """Per-token loss weights: the one place the new array is declared and used."""

    weight: Any = array(ROW, np.float32)

    def targets(self):
        return self.loss_mask * self.weight


def losses(setup, state, batch):
    (loss, metrics), _ = step.make_loss_and_grad(setup)(state.trainable, step.global_batch(setup, batch))
    return float(metrics["loss_gen"])


def test_an_array_added_in_one_place_reaches_the_objective():
    c = base_config()
    c.data.update(generative_batch_size=8, generative_max_len=12)
    c.objective.update(mode="generative", loss_gen_type="token")  # divided by sequences, not weights
    setup = TrainSetup(c, sharding.make_mesh(dict(data=4, fsdp=2, tensor=1, expert=1)))
    state = setup.create_state()
    chat = synthetic_batch(c, seed=0).generative
    ones = np.ones(chat.tokens.shape, np.float32)

    def weighted(weight):
        return Batch(generative=WeightedChat(chat.tokens, chat.mask, chat.loss_mask, weight))

    plain = losses(setup, state, Batch(generative=chat))
    assert losses(setup, state, weighted(ones)) == pytest.approx(plain, rel=1e-6)
    assert losses(setup, state, weighted(2 * ones)) == pytest.approx(2 * plain, rel=1e-6)
    half = ones.copy()
    half[4:] = 0  # the last four chats weigh nothing: the loss of those chats without targets
    cut = chat.replace(loss_mask=chat.loss_mask & (np.arange(8) < 4)[:, None])
    assert losses(setup, state, weighted(half)) == pytest.approx(losses(setup, state, Batch(generative=cut)))
    placed = step.global_batch(setup, weighted(ones)).generative.weight
    assert isinstance(placed, jax.Array) and placed.sharding == setup.batch_sharding  # rows over the shards
    with pytest.raises(UsageError, match=r"batch\['gen_weight'\] has shape \(8, 11\)"):
        step.global_batch(setup, weighted(ones[:, :11]))
