"""The TrainState and everything derived once from (config, mesh) to create it already sharded.

``TrainSetup(config, mesh)`` is the one object that train, aot, benchmarks and tests share: it checks the
config against the mesh (the boundary: nothing later re-checks), resolves the model config (reading a
checkpoint's or Hugging Face directory's config once), and holds the model's graphdef, the optimizer,
the abstract state and the shardings of every state leaf.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grit_jax import sharding
from grit_jax.batch_layout import batch_layout
from grit_jax.choices import BATCH_AXES
from grit_jax.errors import CheckpointError
from grit_jax.model import ModelConfig, Transformer, abstract_model, lora
from grit_jax.model.attention import check_platform
from grit_jax.run_config import data_parallel_size, validate_config
from grit_jax.train.optimizer import make_optimizer
from grit_jax.weights import open_weights
from grit_jax.weights.checkpoints import model_group_config


def resolve_model_config(config) -> ModelConfig:
    """The ModelConfig a training config trains: its `model` group (a preset, a Hugging Face directory or a
    checkpoint) with the run's overrides of how the model runs and its LoRA."""
    return model_group_config(config.model)


class TrainState(struct.PyTreeNode):
    """Everything the step changes. params: the Transformer's nnx.State (with LoRA: its adapters only);
    projection: {} or {kernel [D,P], bias [P]}; opt_state over (params, projection); step; rng (uint32
    key data); frozen: with LoRA the frozen base (the rest of the model's state, never differentiated and
    not saved in checkpoints), else None."""

    params: Any
    projection: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array
    frozen: Any = None

    @property
    def trainable(self):
        return (self.params, self.projection)

    @property
    def model_params(self):
        """The whole model's nnx.State (base and adapters)."""
        return self.params if self.frozen is None else nnx.merge_state(self.frozen, self.params)


def _init_projection(config, hidden_size, key):
    p = config.objective.projection_dim
    if not p:
        return {}
    bound = 1.0 / math.sqrt(hidden_size)  # torch.nn.Linear's default initialisation
    k1, k2 = jax.random.split(key)
    return {
        "kernel": jax.random.uniform(k1, (hidden_size, p), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(k2, (p,), jnp.float32, -bound, bound),
    }


def _opt_state_shardings(abstract_opt, param_shardings_by_path, replicated):
    """Shard each optimizer leaf like the parameter whose path it ends with (mu, nu), else replicate."""

    def pick(path, leaf):
        for i in range(len(path)):
            s = param_shardings_by_path.get(tuple(path[i:]))
            if s is not None and s[1] == tuple(leaf.shape):
                return s[0]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


class TrainSetup:
    """The model, optimizer, abstract state and shardings of ``config`` on ``mesh``, built once."""

    def __init__(self, config, mesh: Mesh, model_cfg: ModelConfig | None = None):
        validate_config(config, mesh.shape)
        self.config, self.mesh = config, mesh
        self.model_config = model_cfg or resolve_model_config(config)
        check_platform(self.model_config.attention_impl, mesh.devices.flat[0].platform)
        self.graphdef, abstract_params = abstract_model(self.model_config)
        self.lora = self.model_config.lora_rank > 0
        self.tx, self.schedule = make_optimizer(config)
        replicated = NamedSharding(mesh, PartitionSpec())
        model_sh = sharding.named_shardings(sharding.param_specs(abstract_params, mesh), mesh)
        param_sh, frozen_sh = lora.split_adapters(model_sh) if self.lora else (model_sh, None)
        # where the base weights go: grit_jax.train.state.initial_params loads them there
        self.base_shardings = frozen_sh if self.lora else param_sh
        proj_sh = {k: replicated for k in ("kernel", "bias")} if config.objective.projection_dim else {}
        self.abstract = jax.eval_shape(self._init, jax.random.PRNGKey(0), None)
        flat_params = jax.tree_util.tree_flatten_with_path((param_sh, proj_sh))[0]
        flat_shapes = jax.tree.leaves((self.abstract.params, self.abstract.projection))
        by_path = {tuple(p): (s, tuple(a.shape)) for (p, s), a in zip(flat_params, flat_shapes)}
        opt_sh = _opt_state_shardings(self.abstract.opt_state, by_path, replicated)
        self.shardings = TrainState(param_sh, proj_sh, opt_sh, replicated, replicated, frozen_sh)
        self.replicated = replicated
        # Every batch array is split along its first dimension over the batch mesh axes.
        self.batch_sharding = NamedSharding(
            mesh, PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.shape))
        )
        # {field: padded or packed layout} (grit_jax.batch_layout): the shapes batches may take
        self.layout = batch_layout(config, data_parallel_size(dict(mesh.shape)), self.model_config.is_moe)

    def _init(self, key, given_params):
        """given_params: the base's weights (with LoRA: without adapters) or None (random)."""
        k_model, k_proj, k_state = jax.random.split(key, 3)
        params, frozen = given_params, None
        if given_params is None or self.lora:
            with nnx.use_eager_sharding(False):
                params = nnx.split(Transformer(self.model_config, rngs=nnx.Rngs(k_model)))[1]
            if self.lora:  # fresh adapters (the model equals the base); a random base unless given
                params, frozen = lora.split_adapters(params)
                frozen = frozen if given_params is None else given_params
        projection = _init_projection(self.config, self.model_config.hidden_size, k_proj)
        opt_state = self.tx.init((params, projection))
        return TrainState(params, projection, opt_state, jnp.zeros((), jnp.int32), k_state, frozen)

    def abstract_state(self) -> TrainState:
        """TrainState of ShapeDtypeStructs carrying their NamedShardings (restore / AOT target)."""
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract, self.shardings
        )

    def create_state(self, params=None) -> TrainState:
        """A TrainState initialised directly into its shards (no weight is ever whole on one device).

        ``params``: the Transformer's nnx.State (or its pure dict) when starting from given weights;
        otherwise the model is initialised from ``config.seed``.
        """
        key = jax.random.PRNGKey(self.config.seed)
        if params is None:
            fn = jax.jit(lambda k: self._init(k, None), out_shardings=self.shardings)
            with sharding.use_mesh(self.mesh):
                return fn(key)
        params = jax.device_put(self._checked_params(params), self.base_shardings)
        fn = jax.jit(self._init, out_shardings=self.shardings, donate_argnums=(1,))
        return fn(key, params)

    def _checked_params(self, params) -> nnx.State:
        base = self.abstract.frozen if self.lora else self.abstract.params
        if not isinstance(params, nnx.State):
            template = jax.tree.map(lambda a: a, base)
            nnx.replace_by_pure_dict(template, params)
            params = template

        def described(value):
            if isinstance(value, jax.ShapeDtypeStruct):  # left from the template: not given
                return "missing"
            return f"{np.shape(value)} {np.dtype(value.dtype)}"

        pairs = zip(nnx.to_flat_state(params), nnx.to_flat_state(base))
        wrong = [
            f"{'.'.join(map(str, k))}: {described(v.get_value())} (want {a.shape} {np.dtype(a.dtype)})"
            for (k, v), (_, a) in pairs
            if described(v.get_value()) != f"{a.shape} {np.dtype(a.dtype)}"
        ]
        if wrong:
            raise CheckpointError(
                "given params do not fit the configured model (missing, mis-shaped or of another dtype):\n  "
                + "\n  ".join(wrong)
            )
        return params


def initial_params(config, cfg: ModelConfig, param_shardings: nnx.State) -> dict | None:
    """None (initialise from config.seed), or the weights of model.hf_dir (a Hugging Face directory) or of
    model.init_checkpoint (a `grit-convert hf-to-orbax` output or another run's checkpoint), as sharded
    arrays in cfg.param_dtype, whatever dtype they were stored in."""
    path = config.model.init_checkpoint or config.model.hf_dir
    if not path:
        return None
    kind = "orbax" if config.model.init_checkpoint else "hf"
    return open_weights(path, config=cfg, kind=kind).load(param_shardings)
