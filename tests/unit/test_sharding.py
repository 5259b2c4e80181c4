"""Mesh construction, the logical-axis rules, and parameters created already sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from grit_jax import sharding
from grit_jax.errors import UsageError
from grit_jax.model import abstract_model
from grit_jax.run_config import base_config, data_parallel_size
from grit_jax.train.state import TrainSetup, resolve_model_config


def test_mesh_resolves_minus_one_and_checks_the_device_count():
    assert sharding.mesh_shape(dict(data=-1, fsdp=2, tensor=1, expert=1), 8) == (4, 2, 1, 1)
    mesh = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=1, expert=1))
    assert dict(mesh.shape) == dict(data=2, fsdp=4, tensor=1, expert=1)
    assert data_parallel_size(mesh.shape) == 8
    assert sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, expert=1)).devices.size == 1
    with pytest.raises(UsageError, match="at most one mesh axis may be -1"):
        sharding.mesh_shape(dict(data=-1, fsdp=-1), 8)
    with pytest.raises(UsageError, match="not divisible"):
        sharding.mesh_shape(dict(data=-1, fsdp=3), 8)
    with pytest.raises(UsageError, match="needs 16 devices but only 8 are available"):
        sharding.make_mesh(dict(data=2, fsdp=8))


@pytest.mark.parametrize("preset", ["tiny", "tiny_moe"])
def test_rules_place_every_parameter(preset):
    c = base_config()
    c.model.preset = preset
    _, abstract = abstract_model(resolve_model_config(c))
    mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=2, expert=2))
    specs = nnx.to_flat_state(sharding.param_specs(abstract, mesh))
    specs = {".".join(map(str, k)): v.get_value() for k, v in specs}
    assert specs["embed_tokens.embedding"] == P("tensor", "fsdp")
    assert specs["layers.self_attn.q_proj.kernel"] == P(None, "fsdp", "tensor", None)
    if preset == "tiny_moe":
        assert specs["layers.block_sparse_moe.w1.kernel"] == P(None, "expert", "fsdp", "tensor")


def test_unplaced_parameters_are_named_and_indivisible_dims_are_replicated():
    class Odd(nnx.Module):
        def __init__(self):
            self.ok = nnx.Param(jnp.zeros((4, 6)), out_sharding=("embed", "kv_heads"), eager_sharding=False)
            self.unknown = nnx.Param(jnp.zeros((4,)), out_sharding=("widgets",), eager_sharding=False)
            self.bare = nnx.Param(jnp.zeros((4, 4)))

    mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4, expert=1))
    state = nnx.state(Odd())
    with pytest.raises(UsageError) as err:
        sharding.param_specs(state, mesh)
    assert "unknown (4,): logical names ['widgets']" in str(err.value)
    assert "bare (4, 4): no logical axis names" in str(err.value)
    del state["unknown"], state["bare"]
    # 6 kv heads do not divide over tensor=4: that dimension falls back to replication.
    assert sharding.param_specs(state, mesh)["ok"].get_value() == P("fsdp", None)


def test_constrain_is_a_no_op_without_a_mesh_and_shards_under_one():
    x = jnp.ones((8, 4, 2))
    assert sharding.constrain(x, ("batch", "length", "act_embed")) is x
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1, expert=1))

    @jax.jit
    def f(x):
        with sharding.use_mesh(mesh):
            return sharding.constrain(x * 2, ("batch", "length", "act_embed"))

    assert f(x).sharding.spec[0] == ("data", "fsdp")


def test_train_state_is_created_sharded_and_matches_its_abstract_form():
    c = base_config()
    c.objective.projection_dim = 8
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1, expert=1))
    abstract = TrainSetup(c, mesh).abstract_state()
    state = TrainSetup(c, mesh).create_state()
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert a.shape == s.shape and a.dtype == s.dtype and a.sharding == s.sharding
    embedding = state.params["embed_tokens"]["embedding"][...]
    assert embedding.sharding.spec == P("tensor", "fsdp")
    assert embedding.addressable_shards[0].data.shape == (512, 64 // 4)
    mu = state.opt_state[1][0].mu[0]["embed_tokens"]["embedding"][
        ...
    ]  # Adam moments shard like the parameter
    assert mu.sharding == embedding.sharding
    # Starting from given weights (a converted HF checkpoint): the values are kept, placed on the mesh.
    given = jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))
    restarted = TrainSetup(c, mesh).create_state(given)
    np.testing.assert_array_equal(restarted.params["norm"]["scale"][...], given["norm"]["scale"])
    assert restarted.params["embed_tokens"]["embedding"][...].sharding == embedding.sharding


# ----------------------------------------------------------------------------- multislice


def _slice_ids(grid, of) -> np.ndarray:
    return np.vectorize(of)(grid)


def test_slices_split_only_the_data_axis():
    """mesh.slices=2 on one process's 8 devices: each slice is a block of the data axis holding every
    fsdp/tensor/expert position, so only the data axis spans slices."""
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1, expert=1, slices=2))
    assert dict(mesh.shape) == dict(data=2, fsdp=4, tensor=1, expert=1)
    slice_of = dict(zip(jax.devices(), sharding.device_slices(jax.devices(), 2)))
    ids = _slice_ids(mesh.devices, slice_of.get)
    assert (ids[0] == 0).all() and (ids[1] == 1).all()
    mesh = sharding.make_mesh(dict(data=-1, slices=2))  # 8-way data: 4 data positions per slice
    assert _slice_ids(mesh.devices, slice_of.get).ravel().tolist() == [0] * 4 + [1] * 4


def test_a_slice_is_a_block_of_hosts():
    """Devices without a slice index (CPU, GPU) take their slice from their process: 4 hosts x 4 devices in
    2 slices put hosts 0-1 in slice 0 and hosts 2-3 in slice 1; fsdp=4 x tensor=2 stays in a slice."""
    from types import SimpleNamespace

    devices = [SimpleNamespace(id=i, process_index=i // 4) for i in range(16)]
    assert sharding.device_slices(devices, 2) == [0] * 8 + [1] * 8
    grid = sharding.slice_grid((2, 4, 2, 1), devices, 2)
    slices = _slice_ids(grid, lambda d: d.process_index // 2)
    assert (slices[0] == 0).all() and (slices[1] == 1).all()
    with pytest.raises(UsageError, match=r"mesh.slices=3 must divide the 4 hosts"):
        sharding.device_slices(devices, 3)


@pytest.mark.parametrize(
    "mesh, message",
    [
        (dict(data=1, fsdp=-1, slices=2), r"^mesh.slices=2: mesh.data=1 must be a multiple of it"),
        (dict(data=-1, slices=3), r"^mesh.slices=3 must divide the 8 devices$"),
        (dict(data=2, slices=2), r"^mesh.slices=2: the mesh .* must use all 8 devices"),
        (dict(data=-1, slices=0), r"^mesh.slices=0: expected an integer >= 1$"),
    ],
)
def test_bad_slices_are_one_line_naming_the_key(mesh, message):
    with pytest.raises(UsageError, match=message) as err:
        sharding.make_mesh(mesh)
    assert "\n" not in str(err.value)
