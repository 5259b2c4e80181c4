"""The one jitted train step: both losses on the global batch, AdamW, and no update when not finite.

``make_train_step(setup)`` returns ``train_step(state, batch) -> (state, metrics)``: both losses in one
``loss_fn`` (grit_jax.train.objective), gradient clipping and AdamW (grit_jax.train.optimizer), a donated
state, and
no update when the loss or the gradients are not finite, so one bad batch cannot poison the weights.
Batches are global arrays (``global_batch``), each host feeding its own rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grit_jax import sharding
from grit_jax.packed_batch import packed_batch_shapes, packed_shapes, validate_packed_batch
from grit_jax.run_config import batch_lengths, batch_shapes, validate_batch
from grit_jax.train import flops
from grit_jax.train import objective as objective_lib
from grit_jax.train.state import TrainSetup, TrainState


def global_batch(setup: TrainSetup, host_batch) -> dict[str, jax.Array]:
    """This host's numpy batch (its rows of the global batch) -> global jax.Arrays on the mesh.

    Its lengths are one of data.length_buckets' (the same on every host: decided from the global plan);
    with data.packing its (rows, row length) are (grit_jax.packed_batch)."""
    hosts = jax.process_count()
    if setup.packing:
        validate_packed_batch(setup.packing, host_batch, num_hosts=hosts)
        shapes = packed_batch_shapes(setup.packing, packed_shapes(setup.packing, host_batch, hosts))
    else:
        validate_batch(setup.config, host_batch, num_hosts=hosts)
        shapes = batch_shapes(setup.config, batch_lengths(setup.config, host_batch))
    return {
        k: jax.make_array_from_process_local_data(
            setup.batch_sharding, np.asarray(host_batch[k], dtype), shape
        )
        for k, (shape, dtype) in shapes.items()
    }


def abstract_batch(setup: TrainSetup, lengths=None) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a global batch (for ahead-of-time compilation); lengths {field: bucket}
    as in config.batch_shapes, by default every field's max_len (the largest shapes); with data.packing,
    lengths are {field: (rows, row length)} (default: the largest, grit_jax.packed_batch)."""
    shapes = (
        packed_batch_shapes(setup.packing, lengths) if setup.packing else batch_shapes(setup.config, lengths)
    )
    return {
        k: jax.ShapeDtypeStruct(shape, dtype, sharding=setup.batch_sharding)
        for k, (shape, dtype) in shapes.items()
    }


def _token_counts(batch):
    """(real tokens, computed positions) of a padded or packed batch."""
    real = [batch[k] for k in ("query_mask", "passage_mask", "gen_mask") if k in batch]
    real += [batch[k] > 0 for k in ("query_segments", "passage_segments", "gen_segments") if k in batch]
    return sum(jnp.sum(m.astype(jnp.int32)) for m in real), sum(m.size for m in real)


def _packed_counts(setup: TrainSetup, batch) -> dict:
    """{field: (real tokens, attended (query, key) pairs)} of a packed batch, for its model FLOPs: a
    token at position p attends to p + 1 keys (causal) or to its whole sequence (sum over a sequence of
    n tokens of 2p + 1 = n * n)."""
    counts = {}
    for field, f in setup.packing.items():
        real = (batch[f"{f.prefix}_segments"] > 0).astype(jnp.float32)
        pos = batch[f"{f.prefix}_positions"].astype(jnp.float32)
        causal = field == "generative" or setup.config.objective.attn == "cccc"
        counts[field] = (jnp.sum(real), jnp.sum(real * (pos + 1 if causal else 2 * pos + 1)))
    return counts


def _loss_and_grad(setup: TrainSetup):
    """(trainable, batch, frozen) -> ((loss, metrics), grads) of the global batch, traced under the mesh.

    Gradients are constrained to their parameters' shardings (a reduce-scatter under FSDP).
    """
    mesh, objective, state_sh, packing = setup.mesh, setup.config.objective, setup.shardings, setup.packing

    def fn(trainable, batch, frozen=None):
        with sharding.use_mesh(mesh):
            # Differentiated with respect to `trainable` only: a frozen LoRA base is a constant of the
            # loss, so no gradient of a base weight is ever computed.
            grad_fn = jax.value_and_grad(objective_lib.loss_fn, has_aux=True)
            chunks = {f.prefix: f.chunks(*batch[f"{f.prefix}_tokens"].shape) for f in packing.values()}
            out, grads = grad_fn(trainable, setup.graphdef, batch, objective, chunks or None, frozen)
            grads = jax.lax.with_sharding_constraint(grads, (state_sh.params, state_sh.projection))
            return out, grads

    return fn


def make_loss_and_grad(setup: TrainSetup):
    """Jitted ``(state.trainable, batch, state.frozen) -> ((loss, metrics), grads)``: the step without the
    update (frozen: the LoRA base, None without LoRA)."""
    state_sh = setup.shardings
    jitted = jax.jit(
        _loss_and_grad(setup),
        in_shardings=(
            (state_sh.params, state_sh.projection),
            {k: setup.batch_sharding for k in setup.batch_shapes},
            state_sh.frozen,
        ),
    )
    return lambda trainable, batch, frozen=None: jitted(trainable, batch, frozen)


def make_train_step(setup: TrainSetup):
    """A jitted ``train_step(state, batch) -> (state, metrics)``.

    The state is donated. Call it with global arrays (``global_batch``); ``train_step.lower(state, batch)``
    lowers it for AOT. When the loss or the gradient norm is not finite, params and optimizer state stay
    as they were (the step counter still advances) and ``metrics["nonfinite"]`` is 1.
    """
    loss_and_grad, tx, schedule = _loss_and_grad(setup), setup.tx, setup.schedule

    def keep_if(finite, new, old):
        return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

    def step(state: TrainState, batch):
        (loss, metrics), grads = loss_and_grad(state.trainable, batch, state.frozen)
        with sharding.use_mesh(setup.mesh):
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
            params, projection = optax.apply_updates(state.trainable, updates)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            params, projection, opt_state = keep_if(
                finite, (params, projection, opt_state), (*state.trainable, state.opt_state)
            )
            new_state = TrainState(
                params, projection, opt_state, state.step + 1, jax.random.split(state.rng)[0], state.frozen
            )
            metrics.update(
                grad_norm=grad_norm,
                param_norm=optax.tree.norm((params, projection)),
                learning_rate=schedule(state.step),
                tokens=_token_counts(batch)[0],
                positions=jnp.asarray(_token_counts(batch)[1], jnp.int32),
                nonfinite=1 - finite.astype(jnp.int32),
            )
            if setup.packing:
                counts = _packed_counts(setup, batch)
                metrics["model_flops"] = flops.packed_step_flops(setup.config, setup.model_config, counts)
        return new_state, metrics

    shapes = setup.batch_shapes
    jitted = jax.jit(
        step,
        in_shardings=(setup.shardings, {k: setup.batch_sharding for k in shapes}),
        out_shardings=(setup.shardings, setup.replicated),
        donate_argnums=(0,),
    )

    def train_step(state, batch):
        # Says what is wrong before anything compiles; each length bucket compiles (and is cached) once.
        if setup.packing:
            validate_packed_batch(setup.packing, batch)
        else:
            validate_batch(setup.config, batch)
        return jitted(state, batch)

    train_step.lower = jitted.lower
    return train_step
