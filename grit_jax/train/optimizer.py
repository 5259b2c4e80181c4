"""AdamW with linear warm-up, then linear, cosine or constant learning rate, after gradient clipping."""

from __future__ import annotations

import math

import jax
import optax


def make_schedule(config):
    """Linear warm-up over warmup_ratio * num_steps, then linear or cosine decay to 0, or constant."""
    opt, total = config.optimizer, max(int(config.num_steps), 1)
    warmup = int(math.ceil(opt.warmup_ratio * total))
    decay_steps = max(total - warmup, 1)
    decay = {
        "linear": lambda: optax.linear_schedule(opt.learning_rate, 0.0, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(opt.learning_rate, decay_steps),
        "constant": lambda: optax.constant_schedule(opt.learning_rate),
    }[opt.schedule]()
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
