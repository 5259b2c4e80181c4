"""grit_jax's train step against the reference's, in PyTorch, on the same weights and batch (issue 13).

    python -m benchmarks.torch_reference_step [--mode unified|embedding|generative] [--reps 5] [--steps 3]
        [--set model.scan_layers=False ...] [--write]

The PyTorch step is what the reference computes: transformers' MistralForCausalLM (sdpa attention), the
embedding pass bidirectional over the padding (a 4-D boolean mask), masked mean pooling without the
instruction tokens, L2 normalisation, InfoNCE over in-batch + hard negatives at temperature 0.02, the
next-token loss averaged over labelled tokens ("mixed"), loss = emb + gen, gradient clipping at 1.0 and
torch.optim.AdamW. Both start from one random Hugging Face model (saved once, loaded by both); the first
step's losses must agree before anything is timed. Timing alternates grit_jax and torch within one run
(the machine is shared, so only the ratio of the two is meaningful). --write puts the figures first in
the table of benchmarks/RESULTS.md under "Train step vs PyTorch".
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from benchmarks.common import add_row, hf_shape, machine, today
from grit_jax import sharding
from grit_jax.run_config import base_config
from grit_jax.train import step
from grit_jax.train.state import TrainSetup, initial_params
from grit_jax.train.synthetic import synthetic_batch

TOPIC = "Train step vs PyTorch"
# The model and batch of issue 13: a random Mistral (preset bench_step_256's shape, transformers'
# initialisation), 8 queries x 32 + 16 passages x 128 + 8 x 128 generative.
MODEL = hf_shape(
    "bench_step_256",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "sliding_window",
)
DATA = dict(
    embedding_batch_size=8,
    generative_batch_size=8,
    query_max_len=32,
    passage_max_len=128,
    generative_max_len=128,
    train_group_size=2,
)


def make_config(hf_dir: str, mode: str, overrides: list[str]):
    config = base_config()
    config.num_steps = 1000
    config.model.hf_dir = hf_dir
    config.data.update(DATA)
    config.objective.mode = mode
    config.optimizer.update(schedule="constant", warmup_ratio=0.0)
    for item in overrides:  # group.field=python-literal
        key, value = item.split("=", 1)
        group, field = key.split(".")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        config[group][field] = value
    return config


# ----------------------------------------------------------------------------- the reference step


def torch_encode(model, tokens, mask, instruction_len):
    """Bidirectional pass over the padding -> masked mean over non-instruction tokens -> L2 normalised."""
    t = tokens.shape[1]
    attn = mask[:, None, None, :].expand(-1, 1, t, t)  # every query position sees every real token
    hidden = model.model(input_ids=tokens, attention_mask=attn).last_hidden_state
    keep = (mask & (torch.arange(t)[None, :] >= instruction_len[:, None])).float()
    emb = (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
    return torch.nn.functional.normalize(emb, dim=-1)


def torch_loss(model, batch, config):
    obj, group = config.objective, config.data.train_group_size
    loss = torch.zeros(())
    if obj.mode in ("unified", "embedding"):
        q = torch_encode(model, batch["query_tokens"], batch["query_mask"], batch["query_instruction_len"])
        p = torch_encode(
            model, batch["passage_tokens"], batch["passage_mask"], batch["passage_instruction_len"]
        )
        scores = q @ p.T / obj.temperature
        loss = loss + torch.nn.functional.cross_entropy(scores, torch.arange(q.shape[0]) * group)
    if obj.mode in ("unified", "generative"):
        tokens = batch["gen_tokens"]
        logits = model(input_ids=tokens, attention_mask=batch["gen_mask"].long()).logits
        labels = torch.where(batch["gen_loss_mask"], tokens, -100)
        gen = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        loss = loss + obj.loss_gen_factor * gen
    return loss


def make_torch_step(model, config):
    opt = config.optimizer
    adamw = torch.optim.AdamW(
        model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps, weight_decay=0.0
    )

    def torch_step(batch):
        adamw.zero_grad(set_to_none=True)
        loss = torch_loss(model, batch, config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
        adamw.step()
        return loss.item()

    return torch_step


def to_torch(b):
    """A grit_jax.model.batch.Batch as torch tensors by name: int64 ids and lengths, bool masks."""
    arrays = b.named().items()
    return {k: torch.from_numpy(np.asarray(v, bool if v.dtype == bool else np.int64)) for k, v in arrays}


# ----------------------------------------------------------------------------- timing


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def measure(mode: str, reps: int, steps: int, overrides: list[str]) -> dict:
    torch.manual_seed(0)
    hf_config = transformers.MistralConfig(**MODEL, attn_implementation="sdpa")
    model = transformers.MistralForCausalLM(hf_config).float().train()
    with tempfile.TemporaryDirectory() as hf_dir:
        model.save_pretrained(hf_dir)
        config = make_config(hf_dir, mode, overrides)
        setup = TrainSetup(config, sharding.make_mesh(config.mesh))
        state = setup.create_state(initial_params(config, setup.model_config, setup.shardings.params))
        host_batch = synthetic_batch(config, seed=0)
    train_step, torch_step = step.make_train_step(setup), make_torch_step(model, config)
    jax_batch, torch_batch = step.global_batch(setup, host_batch), to_torch(host_batch)

    state, metrics = train_step(state, jax_batch)  # compiles; the losses of the same weights
    jax_loss, ref_loss = float(metrics["loss"]), torch_step(torch_batch)
    np.testing.assert_allclose(jax_loss, ref_loss, rtol=2e-4, err_msg="the steps compute different losses")
    torch_step(torch_batch)  # warm-up

    def jax_once():
        nonlocal state
        state, _ = train_step(state, jax_batch)
        jax.block_until_ready(state)

    jax_once()
    jax_s, torch_s = [], []
    for _ in range(reps):  # alternating, so both see the same load
        jax_s.append(timed(jax_once, steps))
        torch_s.append(timed(lambda: torch_step(torch_batch), steps))
    ratios = [t / j for j, t in zip(jax_s, torch_s)]
    positions = sum(f.tokens.size for f in host_batch.fields().values())
    return {
        "mode": mode,
        "loss": (jax_loss, ref_loss),
        "jax_s": statistics.median(jax_s),
        "torch_s": statistics.median(torch_s),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "positions": positions,
        "cores": len(os.sched_getaffinity(0)),
        "load": os.getloadavg()[0],  # the 1-minute load average at the end: how shared the machine was
    }


def write(result: dict, machine: str):
    row = (
        f"| {result['mode']} | {result['overrides']} | {machine} | {result['jax_s']:.3f} | "
        f"{result['torch_s']:.3f} | {result['cores']} | {result['load']:.0f} | "
        f"{result['ratio']:.2f} ({min(result['ratios']):.2f}-"
        f"{max(result['ratios']):.2f}) | {result['positions'] / result['jax_s']:,.0f} | "
        f"{today()} |\n"
    )
    add_row(
        TOPIC,
        "### Rows of `python -m benchmarks.torch_reference_step --write`\n\n"
        "`python -m benchmarks.torch_reference_step --mode MODE --write`: issue 13's random Mistral "
        "(hidden 256, 4 layers, 4 heads / 1 kv head, MLP 1024, vocab "
        "8000) on 8 queries x 32 + 16 passages x 128 + 8 generative x 128 tokens, fp32, AdamW; grit_jax "
        "and the PyTorch reference step alternate in one run. speed = torch s/step / grit_jax s/step "
        "(median over repetitions, range in brackets); >= 1 means grit_jax is at least as fast. "
        "cores: the cores the process may use (`taskset -c 1` for one); load: the machine's "
        "1-minute load average at the end (other users' work).\n\n"
        "| mode | grit_jax settings | machine | grit_jax s/step | torch s/step | cores | load | "
        "speed vs torch | grit_jax positions/s | date |\n|---|---|---|---|---|---|---|---|---|---|\n",
        row,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="unified", choices=("unified", "embedding", "generative"))
    parser.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    parser.add_argument("--steps", type=int, default=3, help="steps per repetition and side")
    parser.add_argument("--set", action="append", default=[], help="grit_jax config: group.field=value")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--machine", default=machine(), help="for RESULTS.md (default: this machine)")
    parser.add_argument("--label", default="", help="the grit_jax code measured (RESULTS.md)")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (taskset)
    result = measure(args.mode, args.reps, args.steps, args.set)
    result["overrides"] = " ".join(x for x in (args.label, *args.set) if x) or "-"
    for key, value in result.items():
        print(f"{key}: {value}")
    if args.write:
        write(result, args.machine)


if __name__ == "__main__":
    main()
