"""The training configuration: every field with its default (one literal), and the checks that run
before anything is built or compiled. No jax here, so a config file imports in milliseconds.

configs/*.py start from ``base_config()`` and change what their recipe needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from grit_jax import storage
from grit_jax.choices import ATTENTIONS, BATCH_AXES, LORA_TARGETS, LOSS_GEN_TYPES, MODES, POOLINGS, SCHEDULES
from grit_jax.errors import UsageError

# Sizes are the tiny model's, so that a bare base_config() runs anywhere; configs/gritlm.py sets the paper's.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "num_steps": 100,
    "max_nonfinite_steps": 5,  # non-finite steps in a row before the run stops
    # XLA's persistent compilation cache: a restart of the same config compiles nothing. "" = the
    # JAX_COMPILATION_CACHE_DIR of the environment if set, else WORKDIR/compile_cache.
    "compile_cache_dir": "",
    # Fields a resume may change although they change the run (e.g. "optimizer.learning_rate"); any other
    # such difference from the run's config.json is refused by name (grit_jax/train/run_origin.py).
    "resume_changes": (),
    "model": {
        "preset": "tiny",  # a ModelConfig preset, unless hf_dir or init_checkpoint is set
        "hf_dir": "",  # a Hugging Face directory: its config.json and weights
        # A GGUF file (llama.cpp's format), or "package:MODULE/FILE" for one inside an installed Python
        # package: converted once into WORKDIR/base_model, which is then model.hf_dir (configs/smollm2.py).
        "gguf": "",
        "init_checkpoint": "",  # a `grit-convert hf-to-orbax` output or another run's checkpoint
        # The published model a recipe starts from (configs/gritlm.py); with it set, a run without hf_dir
        # or init_checkpoint refuses to start unless random_init is True (grit_jax/train/run_summary.py).
        "base_model": "",
        "random_init": False,
        "dtype": "float32",  # compute dtype (bfloat16: mixed precision over param_dtype master weights)
        "param_dtype": "float32",
        "scan_layers": True,
        "remat_policy": "none",  # grit_jax.choices.REMAT_POLICIES
        # training's attention kernel (ATTENTION_IMPLS): auto = splash on TPU, cudnn on GPU, dense on CPU
        "attention_impl": "auto",
        "moe_impl": "auto",  # grit_jax.choices.MOE_IMPLS: how a Mixtral / Qwen3-MoE runs its experts
        # LoRA adapters on a frozen base (kept in param_dtype; the adapters train in float32): rank 0 =
        # full fine-tuning; targets as PEFT names them (grit_jax.choices.LORA_TARGETS); scale alpha / rank.
        # init_adapter: a PEFT LoRA dir to start from (its r, lora_alpha and target_modules must be these).
        "lora": {"rank": 0, "alpha": 16.0, "targets": LORA_TARGETS, "init_adapter": ""},
    },
    "data": {
        "data_dir": "",  # prepared by `grit-data prepare` (holds manifest.json and the tokenizer)
        "tokenizer": "",  # "" = the copy in data_dir; a tokenizer.model, a tokenizer.json or a directory
        "embedding_batch_size": 8,  # global batch sizes
        "generative_batch_size": 8,
        "query_max_len": 16,  # padded lengths; at most the limits the data was prepared with
        "passage_max_len": 32,
        "generative_max_len": 32,
        "train_group_size": 2,  # passages per query: 1 positive + G-1 hard negatives
        # Shorter padded lengths per field (query, passage, generative; the field's *_max_len is always the
        # last): each global batch is padded to the smallest that holds its longest row. () = always max_len.
        # On TPU use multiples of 128 (the attention tiles). Each combination used compiles once.
        "length_buckets": {"query": (), "passage": (), "generative": ()},
        # Pack several sequences per row (grit_jax.batch_layout): no compute on padding. Rows of *_max_len.
        "packing": False,
        "seed": 0,
        "shuffle": True,  # False keeps file order (tests)
        "use_unique_indices": True,  # generative stream drawn without replacement, refilled when exhausted
        "prefixlm": False,  # train only on the last assistant turn
        "num_threads": 4,  # grain reader threads per host
        "prefetch_buffer_size": 8,  # batches prefetched per host
        "demo_corpus": False,  # build the stdlib-docstring corpus into WORKDIR/data when data_dir is ""
        "demo_vocab_size": 1024,
        # The demo corpus' tokenizer: "" = a sentencepiece one trained on the corpus (demo_vocab_size);
        # "model" = model.hf_dir's own (a pretrained model must read the ids it was trained on).
        "demo_tokenizer": "",
    },
    "objective": {
        "mode": "unified",  # MODES
        "attn": "bbcc",  # ATTENTIONS: attention of the embedding pass
        "pooling": "mean",  # POOLINGS
        "normalize": True,
        "temperature": 0.02,
        "projection_dim": 0,  # > 0: a linear projection before pooling
        "loss_gen_type": "mixed",  # LOSS_GEN_TYPES
        "loss_gen_factor": 1.0,
        "router_aux_loss_coef": 0.02,
        "embedding_chunk_size": 0,  # GradCache: sequences per chunk over the global batch; 0 = unchunked
        "generative_accumulation_steps": 1,
        # The next-token loss over blocks of this many positions of a generative row, each block's logits
        # recomputed in the backward pass: no whole [rows, T, vocab] logits. 0 = the whole row at once.
        # A block that does not divide the row (or a length bucket) pads its last block with weight 0.
        "gen_loss_block": 0,
        # 0: the exact gradient of the global loss. W > 0: the embedding gradient / W (loss_emb unchanged),
        # the balance of a reference run on W GPUs (its all-gather carries no gradient); any mesh.
        "reference_world_size": 0,
    },
    "optimizer": {
        "learning_rate": 2e-5,
        "schedule": "linear",  # SCHEDULES, after a linear warm-up
        "warmup_ratio": 0.03,
        "weight_decay": 0.0,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-8,
        "max_grad_norm": 1.0,  # 0: no clipping
    },
    # one size may be -1: the other devices; slices > 1: multislice, only data spans slices (sharding.py)
    "mesh": {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1, "slices": 1},
    # restart_when_damaged: start over from step 0 when every kept checkpoint is damaged (else refused)
    "checkpoint": {"every_steps": 500, "keep": 3, "async_save": True, "restart_when_damaged": False},
    "log": {
        "every_steps": 10,
        "eval_every_steps": 0,  # held-out retrieval and generative loss; 0 = never
        "eval_max_queries": 256,
        "eval_max_chats": 0,  # held-out chats scored for eval_loss_gen: the first N; 0 = all
        "peak_flops_per_device": 0.0,  # 0: known accelerators from grit_jax.hardware, else no MFU
        "profile_steps": "",  # "FIRST:LAST", e.g. "10:13": a jax.profiler trace of those steps (process 0)
    },
}


# Every number of the config and where it must lie: (lowest, highest, integer); a bound in a list is
# excluded ([0] means > 0). Checked first by validate_config; tests/test_reliability_inputs.py walks
# DEFAULTS and fails for a number without a range here.
_POSITIVE, _COUNT, _SIZE = (1, None, True), (0, None, True), ([0], None, False)
NUMBER_RANGES: dict[str, tuple] = {
    "seed": _COUNT,
    "num_steps": _POSITIVE,
    "model.lora.rank": _COUNT,  # 0: no adapters
    "model.lora.alpha": _SIZE,
    "max_nonfinite_steps": _POSITIVE,
    **{f"data.{k}": _POSITIVE for k in ("embedding_batch_size", "generative_batch_size", "query_max_len")},
    **{f"data.{k}": _POSITIVE for k in ("passage_max_len", "generative_max_len", "train_group_size")},
    **{f"data.{k}": _POSITIVE for k in ("num_threads", "prefetch_buffer_size")},
    "data.seed": _COUNT,
    "data.demo_vocab_size": _POSITIVE,  # enough for the corpus' characters: data/tokenizer.py says
    "objective.temperature": _SIZE,
    "objective.projection_dim": _COUNT,
    "objective.loss_gen_factor": (0, None, False),
    "objective.router_aux_loss_coef": (0, None, False),
    "objective.embedding_chunk_size": _COUNT,
    "objective.generative_accumulation_steps": _POSITIVE,
    "objective.gen_loss_block": _COUNT,  # 0: the whole row at once
    "objective.reference_world_size": _COUNT,
    "optimizer.learning_rate": _SIZE,
    "optimizer.warmup_ratio": (0, 1, False),
    "optimizer.weight_decay": (0, None, False),
    "optimizer.b1": (0, [1], False),
    "optimizer.b2": (0, [1], False),
    "optimizer.eps": _SIZE,
    "optimizer.max_grad_norm": (0, None, False),
    **{f"mesh.{a}": (-1, None, True) for a in ("data", "fsdp", "tensor", "expert")},  # 0: sharding.py
    "mesh.slices": _POSITIVE,
    "checkpoint.every_steps": _POSITIVE,
    "checkpoint.keep": _POSITIVE,
    "log.every_steps": _POSITIVE,
    "log.eval_every_steps": _COUNT,
    "log.eval_max_queries": _POSITIVE,
    "log.eval_max_chats": _COUNT,
    "log.peak_flops_per_device": (0, None, False),
}


def _check_number(name: str, value, rule: tuple) -> None:
    low, high, integer = rule
    bounds = [f">= {low}" if not isinstance(low, list) else f"> {low[0]}"]
    if high is not None:
        bounds.append(f"<= {high}" if not isinstance(high, list) else f"< {high[0]}")
    wanted = f"{'an integer' if integer else 'a finite number'} {' and '.join(bounds)}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = value > low[0] if isinstance(low, list) else value >= low
    if ok and high is not None:
        ok = value < high[0] if isinstance(high, list) else value <= high
    if not ok:
        raise UsageError(f"{name}={value!r}: expected {wanted}")


def check_numbers(config) -> None:
    """UsageError naming the first number of the config outside its range (NUMBER_RANGES)."""
    for name, rule in NUMBER_RANGES.items():
        group, _, field = name.rpartition(".")
        node = config[group] if group else config
        if field in node:
            _check_number(name, node[field], rule)


def base_config() -> ml_collections.ConfigDict:
    """A fresh copy of every group with its defaults."""
    return ml_collections.ConfigDict(DEFAULTS)


# Which *_max_len bounds each length_buckets field (a batch's shapes: grit_jax.batch_layout).
LENGTH_FIELDS = {"query": "query_max_len", "passage": "passage_max_len", "generative": "generative_max_len"}


def length_buckets(data, field: str) -> tuple[int, ...]:
    """The padded lengths a ``field`` batch may have, ascending; the last is the field's *_max_len."""
    top = int(data[LENGTH_FIELDS[field]])
    return tuple(sorted({int(n) for n in data.length_buckets[field] if int(n) < top} | {top}))


def bucket_length(buckets: tuple[int, ...], longest: int) -> int:
    """The smallest bucket that holds a row of ``longest`` tokens (rows are cut at the last bucket)."""
    return next((n for n in buckets if n >= longest), buckets[-1])


def num_batch_shapes(config) -> int:
    """How many batch shapes (so compiled train steps) data.length_buckets allows at most."""
    fields = [f for f in LENGTH_FIELDS if uses(config, "generative" if f == "generative" else "embedding")]
    return math.prod(len(length_buckets(config.data, f)) for f in fields)


def uses(config, part: str) -> bool:
    """Whether the objective's mode trains ``part`` ("embedding" or "generative")."""
    return config.objective.mode in ("unified", part)


def data_parallel_size(mesh_shape: Mapping[str, int]) -> int:
    """W: the number of batch shards (product of the mesh axes that split the batch)."""
    return math.prod(mesh_shape.get(a, 1) for a in BATCH_AXES)


def validate_config(config, mesh_shape: Mapping[str, int]) -> None:
    """Raise UsageError, naming the field to change, for anything that would fail inside jit."""
    check_numbers(config)
    for group, field in (("model", "hf_dir"), ("model", "init_checkpoint"), ("data", "data_dir")):
        if config[group][field]:
            storage.as_path(config[group][field], f"{group}.{field}")  # local or gs://, nothing else
    if config.data.demo_tokenizer not in ("", "model"):
        raise UsageError(f"data.demo_tokenizer={config.data.demo_tokenizer!r}: expected '' or 'model'")
    if config.data.demo_tokenizer == "model" and not (config.model.hf_dir or config.model.gguf):
        raise UsageError(
            "data.demo_tokenizer='model' needs model.hf_dir or model.gguf (the model's tokenizer)"
        )
    if storage.is_url(config.data.tokenizer):
        raise UsageError(
            f"data.tokenizer={config.data.tokenizer}: a URL; leave it empty to use the copy that "
            "grit-data prepare keeps in data.data_dir (which may be gs://)"
        )
    obj = config.objective
    for field, allowed in (
        ("mode", MODES),
        ("attn", tuple(ATTENTIONS)),
        ("pooling", POOLINGS),
        ("loss_gen_type", LOSS_GEN_TYPES),
    ):
        if obj[field] not in allowed:
            raise UsageError(f"objective.{field}={obj[field]!r}: expected one of {allowed}")
    if obj.reference_world_size < 0:
        raise UsageError(
            f"objective.reference_world_size={obj.reference_world_size}: use 0 (exact gradient) or the "
            "reference run's GPU count"
        )
    profile_steps(config)  # a malformed log.profile_steps fails here, before anything compiles
    _validate_buckets(config.data)
    _validate_packing(config.data)
    if config.optimizer.schedule not in SCHEDULES:
        raise UsageError(f"optimizer.schedule={config.optimizer.schedule!r}: expected one of {SCHEDULES}")
    w = data_parallel_size(mesh_shape)
    axes = " x ".join(f"{a}={mesh_shape[a]}" for a in BATCH_AXES if a in mesh_shape)
    where = f"the data-parallel size {w} (mesh {axes})"
    if uses(config, "embedding"):
        _validate_embedding(config, w, where)
    if uses(config, "generative"):
        bg, steps = config.data.generative_batch_size, max(obj.generative_accumulation_steps, 1)
        if bg % (w * steps):
            raise UsageError(
                f"data.generative_batch_size={bg} must be divisible by {where} times "
                f"objective.generative_accumulation_steps={steps}; use a multiple of {w * steps}"
            )


def _validate_buckets(data) -> None:
    unknown = sorted(set(data.length_buckets) - set(LENGTH_FIELDS))
    if unknown:
        raise UsageError(f"data.length_buckets.{unknown[0]}: unknown field; expected {tuple(LENGTH_FIELDS)}")
    for field, limit in LENGTH_FIELDS.items():
        given = data.length_buckets[field]
        bad = [n for n in given if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= data[limit]]
        if bad:
            raise UsageError(
                f"data.length_buckets.{field}={tuple(given)}: {bad[0]!r} is not a length in "
                f"1..data.{limit}={data[limit]} (the largest bucket is always data.{limit})"
            )


def _validate_packing(data) -> None:
    bucketed = [f for f in LENGTH_FIELDS if data.length_buckets[f]]
    if data.packing and bucketed:
        raise UsageError(
            f"data.packing packs rows of *_max_len: drop data.length_buckets.{bucketed[0]} (packing leaves "
            "less padding than buckets) or set data.packing=False"
        )


def profile_steps(config) -> tuple[int, int] | None:
    """(first, last) step of log.profile_steps ("FIRST:LAST"), or None when no profile is asked for."""
    text = config.log.profile_steps
    if not text:
        return None
    first, _, last = text.partition(":")
    if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
        raise UsageError(f"log.profile_steps={text!r}: expected FIRST:LAST steps, e.g. 10:13")
    return int(first), int(last)


def _validate_embedding(config, w: int, where: str) -> None:
    b, g = config.data.embedding_batch_size, config.data.train_group_size
    chunk = config.objective.embedding_chunk_size
    if b % w:
        raise UsageError(
            f"data.embedding_batch_size={b} is not divisible by {where}; use a multiple of {w} "
            f"or change mesh.data/fsdp/expert"
        )
    if g < 1 or b * g < 2:
        raise UsageError(
            f"data.train_group_size={g} with data.embedding_batch_size={b} leaves the contrastive "
            f"loss no negative; use train_group_size >= 2 or a larger batch"
        )
    if chunk and (chunk % w or b % chunk):
        raise UsageError(
            f"objective.embedding_chunk_size={chunk} must be a multiple of {where} and divide "
            f"data.embedding_batch_size={b}; use e.g. {w} or 0 (no chunking)"
        )
