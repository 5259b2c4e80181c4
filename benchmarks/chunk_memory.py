"""Peak memory of the compiled train step as the embedding chunk shrinks (GradCache).

Compiles the full unified train step (embedding + generative pass, AdamW) on one CPU device for
several `objective.embedding_chunk_size` values and prints XLA's memory_analysis() (temp bytes =
the step's peak scratch memory beyond arguments and outputs). Nothing runs; only compiles.

    python -m benchmarks.chunk_memory
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from grit_jax import sharding
from grit_jax.run_config import base_config  # noqa: E402
from grit_jax.train import step
from grit_jax.train.state import TrainSetup, resolve_model_config  # noqa: E402

CHUNKS = (0, 32, 16, 8, 4, 2)


def mib(b):
    return f"{b / 2**20:.1f}"


def config(chunk):
    c = base_config()
    c.model.preset = "tiny"
    c.data.update(
        embedding_batch_size=32,
        train_group_size=2,
        query_max_len=64,
        passage_max_len=256,
        generative_batch_size=4,
        generative_max_len=256,
    )
    c.objective.embedding_chunk_size = chunk
    return c


def main():
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1, expert=1))
    c = config(0)
    model = resolve_model_config(c)
    print(
        f"tiny model (hidden {model.hidden_size}, {model.num_hidden_layers} layers), "
        f"{c.data.embedding_batch_size} queries x {c.data.query_max_len} tokens, "
        f"{c.data.embedding_batch_size * c.data.train_group_size} passages x "
        f"{c.data.passage_max_len} tokens, {c.data.generative_batch_size} x {c.data.generative_max_len} "
        f"generative; {jax.devices()[0].platform}"
    )
    print("| embedding_chunk_size | temp (peak scratch) MiB | arguments MiB | outputs MiB |")
    print("|---|---|---|---|")
    for chunk in CHUNKS:
        c = config(chunk)
        setup = TrainSetup(c, mesh)
        compiled = (
            step.make_train_step(setup).lower(setup.abstract_state(), step.abstract_batch(setup)).compile()
        )
        m = compiled.memory_analysis()
        print(
            f"| {chunk or 'none (0)'} | {mib(m.temp_size_in_bytes)} | {mib(m.argument_size_in_bytes)} | "
            f"{mib(m.output_size_in_bytes)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
