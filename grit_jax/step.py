"""The train step: config checks, optimizer, a TrainState created already sharded, one jitted step.

``make_train_step(config, mesh)`` returns ``train_step(state, batch) -> (state, metrics)``: both
losses in one ``loss_fn``, AdamW with warm-up and decay, gradient clipping, donated state, and no
update when the loss or the gradients are not finite (DESIGN decision 7).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grit_jax import objective as objective_lib
from grit_jax import sharding
from grit_jax.model import ModelConfig, Transformer


class ConfigError(ValueError):
    """A training configuration that cannot run; the message says what to change."""


def default_train_config() -> ml_collections.ConfigDict:
    """Every field the step reads, with the paper's recipe where it has one, on the tiny model."""
    c = ml_collections.ConfigDict()
    c.seed, c.num_steps = 0, 100
    c.model = dict(
        preset="tiny",
        hf_dir="",
        init_checkpoint="",
        dtype="float32",
        param_dtype="float32",
        scan_layers=True,
        remat_policy="none",
    )
    c.data = dict(
        embedding_batch_size=8,
        generative_batch_size=8,
        query_max_len=16,
        passage_max_len=32,
        generative_max_len=32,
        train_group_size=2,
    )
    c.objective = dict(
        mode="unified",
        attn="bbcc",
        pooling="mean",
        normalize=True,
        temperature=0.02,
        projection_dim=0,
        loss_gen_type="mixed",
        loss_gen_factor=1.0,
        router_aux_loss_coef=0.02,
        embedding_chunk_size=0,
        generative_accumulation_steps=1,
        reference_gradient_scale=False,
    )
    c.optimizer = dict(
        learning_rate=2e-5,
        schedule="linear",
        warmup_ratio=0.03,
        weight_decay=0.0,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        max_grad_norm=1.0,
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1, expert=1)
    c.checkpoint = dict(every_steps=500, keep=3)
    c.log = dict(every_steps=10, eval_every_steps=0)
    return c


def model_config(config) -> ModelConfig:
    """The ModelConfig of ``config.model``: a preset, an HF directory or an orbax checkpoint (its own
    model config), with our overrides (dtype, param_dtype, scan_layers, remat_policy)."""
    m = config.model
    overrides = {k: m[k] for k in ("dtype", "param_dtype", "scan_layers", "remat_policy") if k in m}
    if m.get("init_checkpoint"):
        from grit_jax.convert import resolve_checkpoint

        return resolve_checkpoint(m.init_checkpoint).config.replace(**overrides)
    if m.get("hf_dir"):
        return ModelConfig.from_hf_json(m.hf_dir, **overrides)
    return ModelConfig.preset(m.preset, **overrides)


# ----------------------------------------------------------------------------- checks before compiling


def _uses(config, part):
    return config.objective.mode in ("unified", part)


def validate_config(config, mesh: Mesh) -> None:
    """Raise ConfigError, naming the field to change, for anything that would fail inside jit."""
    obj, data = config.objective, config.data
    for field, allowed in (
        ("mode", objective_lib.MODES),
        ("attn", tuple(objective_lib.ATTENTIONS)),
        ("pooling", objective_lib.POOLINGS),
        ("loss_gen_type", objective_lib.LOSS_GEN_TYPES),
    ):
        if obj[field] not in allowed:
            raise ConfigError(f"objective.{field}={obj[field]!r}: expected one of {allowed}")
    if config.optimizer.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={config.optimizer.schedule!r}: expected one of {SCHEDULES}")
    w = sharding.data_parallel_size(mesh)
    axes = " x ".join(f"{a}={mesh.shape[a]}" for a in sharding.BATCH_AXES if a in mesh.shape)
    where = f"the data-parallel size {w} (mesh {axes})"
    if _uses(config, "embedding"):
        b, g, chunk = data.embedding_batch_size, data.train_group_size, obj.embedding_chunk_size
        if b % w:
            raise ConfigError(
                f"data.embedding_batch_size={b} is not divisible by {where}; use a multiple of {w} "
                f"or change mesh.data/fsdp/expert"
            )
        if g < 1 or b * g < 2:
            raise ConfigError(
                f"data.train_group_size={g} with data.embedding_batch_size={b} leaves the contrastive "
                f"loss no negative; use train_group_size >= 2 or a larger batch"
            )
        if chunk and (chunk % w or b % chunk):
            raise ConfigError(
                f"objective.embedding_chunk_size={chunk} must be a multiple of {where} and divide "
                f"data.embedding_batch_size={b}; use e.g. {w} or 0 (no chunking)"
            )
    if _uses(config, "generative"):
        bg, steps = data.generative_batch_size, max(obj.generative_accumulation_steps, 1)
        if bg % (w * steps):
            raise ConfigError(
                f"data.generative_batch_size={bg} must be divisible by {where} times "
                f"objective.generative_accumulation_steps={steps}; use a multiple of {w * steps}"
            )


def batch_shapes(config) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Global shape and dtype of every array of a batch for ``config`` (the jitted step's input)."""
    d = config.data
    shapes = {}
    if _uses(config, "embedding"):
        b, n = d.embedding_batch_size, d.embedding_batch_size * d.train_group_size
        shapes.update(
            query_tokens=((b, d.query_max_len), np.int32),
            query_mask=((b, d.query_max_len), np.bool_),
            query_instruction_len=((b,), np.int32),
            passage_tokens=((n, d.passage_max_len), np.int32),
            passage_mask=((n, d.passage_max_len), np.bool_),
            passage_instruction_len=((n,), np.int32),
        )
    if _uses(config, "generative"):
        bg, lg = d.generative_batch_size, d.generative_max_len
        shapes.update(
            gen_tokens=((bg, lg), np.int32), gen_mask=((bg, lg), np.bool_), gen_loss_mask=((bg, lg), np.bool_)
        )
    return shapes


def validate_batch(config, batch, global_batch=True) -> None:
    """Check a batch's arrays against the configured shapes (per host: global_batch=False)."""
    expected = batch_shapes(config)
    missing = sorted(set(expected) - set(batch))
    if missing:
        raise ConfigError(f"batch lacks {missing} needed by objective.mode={config.objective.mode!r}")
    g = config.data.train_group_size
    if "passage_tokens" in batch and "query_tokens" in batch:
        nq, np_ = batch["query_tokens"].shape[0], batch["passage_tokens"].shape[0]
        if np_ != nq * g:
            raise ConfigError(
                f"the batch has {np_} passages for {nq} queries but data.train_group_size={g} needs {nq * g} "
                f"(a positive and {g - 1} hard negatives each); lower data.train_group_size to {max(np_ // max(nq, 1), 1)} "
                f"or give every query {g - 1} negatives"
            )
    scale = 1 if global_batch else jax.process_count()
    for name, (shape, _) in expected.items():
        got = tuple(batch[name].shape)
        if (got[0] * scale, *got[1:]) != shape:
            raise ConfigError(
                f"batch[{name!r}] has shape {got}, the config says {shape} globally "
                f"(data.*_batch_size, *_max_len, train_group_size)"
            )


# ----------------------------------------------------------------------------- optimizer

SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(config):
    """Linear warm-up over warmup_ratio * num_steps, then linear or cosine decay to 0, or constant."""
    opt, total = config.optimizer, max(int(config.num_steps), 1)
    warmup = int(math.ceil(opt.warmup_ratio * total))
    decay_steps = max(total - warmup, 1)
    decay = {
        "linear": optax.linear_schedule(opt.learning_rate, 0.0, decay_steps),
        "cosine": optax.cosine_decay_schedule(opt.learning_rate, decay_steps),
        "constant": optax.constant_schedule(opt.learning_rate),
    }[opt.schedule]
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup), decay], [warmup])


def _decay_mask(trainable):
    """Weight decay on matrices only: not on norm scales or biases (as the reference's HF Trainer)."""

    def decays(path, _):
        names = jax.tree_util.keystr(path)
        return not ("scale" in names or "bias" in names)

    return jax.tree_util.tree_map_with_path(decays, trainable)


def make_optimizer(config):
    """(optax transform, schedule): clip by global norm, then AdamW."""
    opt = config.optimizer
    schedule = make_schedule(config)
    tx = optax.chain(
        optax.clip_by_global_norm(opt.max_grad_norm) if opt.max_grad_norm else optax.identity(),
        optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=_decay_mask
        ),
    )
    return tx, schedule


# ----------------------------------------------------------------------------- state


class TrainState(struct.PyTreeNode):
    """Everything the step changes. params: the Transformer's nnx.State; projection: {} or
    {kernel [D,P], bias [P]}; opt_state over (params, projection); step; rng (uint32 key data)."""

    params: Any
    projection: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array

    @property
    def trainable(self):
        return (self.params, self.projection)


def abstract_model(config):
    """(graphdef, abstract nnx.State) of the model, without allocating weights."""
    cfg = model_config(config)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(model)


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


def _build(config, mesh, params=None):
    """The init function and its output shardings (shared by abstract and concrete creation)."""
    cfg = model_config(config)
    graphdef, abstract_params = abstract_model(config)
    param_specs = sharding.param_specs(abstract_params, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    param_sh = sharding.named_shardings(param_specs, mesh)
    proj_sh = {k: replicated for k in ("kernel", "bias")} if config.objective.projection_dim else {}
    tx, _ = make_optimizer(config)

    def init(key, given_params):
        k_model, k_proj, k_state = jax.random.split(key, 3)
        if given_params is None:
            with nnx.use_eager_sharding(False):
                given_params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(k_model)))[1]
        projection = _init_projection(config, cfg.hidden_size, k_proj)
        return TrainState(
            given_params, projection, tx.init((given_params, projection)), jnp.zeros((), jnp.int32), k_state
        )

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0), None)
    flat_params = jax.tree_util.tree_flatten_with_path((param_sh, proj_sh))[0]
    flat_shapes = jax.tree.leaves((abstract.params, abstract.projection))
    by_path = {tuple(p): (s, tuple(a.shape)) for (p, s), a in zip(flat_params, flat_shapes)}
    opt_sh = _opt_state_shardings(abstract.opt_state, by_path, replicated)
    shardings = TrainState(param_sh, proj_sh, opt_sh, replicated, replicated)
    return init, abstract, shardings, graphdef


def abstract_train_state(config, mesh) -> TrainState:
    """TrainState of ShapeDtypeStructs carrying their NamedShardings (restore / AOT target)."""
    _, abstract, shardings, _ = _build(config, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def train_state_shardings(config, mesh) -> TrainState:
    return _build(config, mesh)[2]


def create_train_state(config, mesh, params=None) -> TrainState:
    """A TrainState initialised directly into its shards (no weight is ever whole on one device).

    ``params``: the Transformer's nnx.State (or its pure dict) when starting from a converted
    Hugging Face checkpoint; otherwise the model is initialised from ``config.seed``.
    """
    init, abstract, shardings, _ = _build(config, mesh)
    key = jax.random.PRNGKey(config.seed)
    if params is None:
        fn = jax.jit(lambda k: init(k, None), out_shardings=shardings)
        with sharding.use_mesh(mesh):
            return fn(key)
    if not isinstance(params, nnx.State):
        template = jax.tree.map(lambda a: a, abstract.params)
        nnx.replace_by_pure_dict(template, params)
        params = template
    wrong = [
        f"{'.'.join(map(str, k))}: {np.shape(v.get_value())} (want {a.shape})"
        for (k, v), (_, a) in zip(nnx.to_flat_state(params), nnx.to_flat_state(abstract.params))
        if isinstance(v.get_value(), jax.ShapeDtypeStruct) or np.shape(v.get_value()) != a.shape
    ]
    if wrong:
        raise ConfigError(
            "given params do not fit the configured model (missing or mis-shaped):\n  " + "\n  ".join(wrong)
        )
    params = jax.device_put(params, shardings.params)
    fn = jax.jit(init, out_shardings=shardings, donate_argnums=(1,))
    return fn(key, params)


# ----------------------------------------------------------------------------- batch


def batch_sharding(mesh) -> NamedSharding:
    """Every batch array is split along its first dimension over the batch mesh axes."""
    axes = tuple(a for a in sharding.BATCH_AXES if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes))


def make_global_batch(config, mesh, host_batch) -> dict[str, jax.Array]:
    """This host's numpy batch (its rows of the global batch) -> global jax.Arrays on ``mesh``."""
    validate_batch(config, host_batch, global_batch=False)
    shapes, sh = batch_shapes(config), batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sh, np.asarray(host_batch[k], dtype), shape)
        for k, (shape, dtype) in shapes.items()
    }


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a global batch (for ahead-of-time compilation)."""
    sh = batch_sharding(mesh)
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
        for k, (shape, dtype) in batch_shapes(config).items()
    }


# ----------------------------------------------------------------------------- step


def _tokens(config, batch):
    keys = [k for k in ("query_mask", "passage_mask", "gen_mask") if k in batch]
    return sum(jnp.sum(batch[k].astype(jnp.int32)) for k in keys)


def _loss_and_grad(config, mesh, graphdef, state_sh):
    """(trainable, batch) -> ((loss, metrics), grads) of the global batch, traced under ``mesh``.

    Gradients are constrained to their parameters' shardings (a reduce-scatter under FSDP).
    """
    w = sharding.data_parallel_size(mesh)

    def fn(trainable, batch):
        with sharding.use_mesh(mesh):
            grad_fn = jax.value_and_grad(objective_lib.loss_fn, has_aux=True)
            out, grads = grad_fn(trainable, graphdef, batch, config.objective, w)
            grads = jax.lax.with_sharding_constraint(grads, (state_sh.params, state_sh.projection))
            return out, grads

    return fn


def make_loss_and_grad(config, mesh):
    """Jitted ``(state.trainable, batch) -> ((loss, metrics), grads)``: the step without the update."""
    validate_config(config, mesh)
    _, _, state_sh, graphdef = _build(config, mesh)
    bsh = batch_sharding(mesh)
    return jax.jit(
        _loss_and_grad(config, mesh, graphdef, state_sh),
        in_shardings=((state_sh.params, state_sh.projection), {k: bsh for k in batch_shapes(config)}),
    )


def make_train_step(config, mesh):
    """A jitted ``train_step(state, batch) -> (state, metrics)`` for ``config`` on ``mesh``.

    The config is checked here, before anything compiles. The state is donated. Call it with global
    arrays (``make_global_batch``); ``train_step.lower(state, batch)`` lowers it for AOT. When the
    loss or the gradient norm is not finite, params and optimizer state stay as they were (the step
    counter still advances) and ``metrics["nonfinite"]`` is 1.
    """
    validate_config(config, mesh)
    tx, schedule = make_optimizer(config)
    _, _, state_sh, graphdef = _build(config, mesh)
    loss_and_grad = _loss_and_grad(config, mesh, graphdef, state_sh)

    def step(state: TrainState, batch):
        (loss, metrics), grads = loss_and_grad(state.trainable, batch)
        with sharding.use_mesh(mesh):
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
            params, projection = optax.apply_updates(state.trainable, updates)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
            params, projection, opt_state = keep(
                (params, projection, opt_state), (*state.trainable, state.opt_state)
            )
            new_state = TrainState(
                params, projection, opt_state, state.step + 1, jax.random.split(state.rng)[0]
            )
            metrics.update(
                grad_norm=grad_norm,
                param_norm=optax.tree.norm((params, projection)),
                learning_rate=schedule(state.step),
                tokens=_tokens(config, batch),
                nonfinite=1 - finite.astype(jnp.int32),
            )
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    bsh = batch_sharding(mesh)
    names = batch_shapes(config)
    jitted = jax.jit(
        step,
        in_shardings=(state_sh, {k: bsh for k in names}),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )

    def train_step(state, batch):
        if set(batch) != set(names) or any(tuple(batch[k].shape) != s for k, (s, _) in names.items()):
            validate_batch(config, {k: v for k, v in batch.items() if k in names})
            raise ConfigError(
                f"batch has arrays {sorted(set(batch) - set(names))} that "
                f"objective.mode={config.objective.mode!r} does not use"
            )
        return jitted(state, batch)

    train_step.lower = jitted.lower
    train_step.jitted = jitted
    return train_step


def synthetic_batch(config, seed=0, num_hosts=1) -> dict[str, np.ndarray]:
    """A random host batch of the configured shapes (tests, benchmarks, smoke runs): right padding,
    1-3 instruction tokens, generative targets after a 2-token prompt."""
    rng = np.random.default_rng(seed)
    vocab = model_config(config).vocab_size
    out = {}
    for name, (shape, dtype) in batch_shapes(config).items():
        shape = (shape[0] // num_hosts, *shape[1:])
        if name.endswith("instruction_len"):
            out[name] = rng.integers(1, 4, shape).astype(np.int32)
        elif name.endswith("tokens"):
            out[name] = rng.integers(3, vocab, shape).astype(np.int32)
        elif name.endswith("_mask") and name != "gen_loss_mask":
            lengths = rng.integers(max(shape[1] // 2, 4), shape[1] + 1, shape[0])
            out[name] = np.arange(shape[1])[None, :] < lengths[:, None]
    if "gen_mask" in out:
        out["gen_loss_mask"] = out["gen_mask"] & (np.arange(out["gen_mask"].shape[1])[None, :] >= 2)
    return out
