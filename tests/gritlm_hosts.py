"""One host of tests/e2e/test_inference_hosts.py (run by launch/local.sh with GRIT_LOCAL_MODULE): joins the
cluster, loads GritLM on a mesh over every device of every host, encodes, greedy-generates (also from a
RAG cache), and writes what it got and where the weights and the batch lived to OUT/host<p>.json.

    python -m tests.gritlm_hosts MODEL_DIR OUT
"""

import json
import os
import sys

from grit_jax.distributed import initialize_from_env

INSTRUCTION = "<|user|>\nRetrieve the passage that answers the question\n<|embed|>\n"
TEXTS = ["a passage about lists", "what is GRIT?", "names and numbers", "B", "a longer text " * 5] * 2
PROMPTS = ["hello world", "Return the list of names", "A"]
QUERY, DOC = "Which entries does the list include?", "The list holds three names: Ada, Alan and Grace."
MESH = {"fsdp": 4, "tensor": 2}  # fsdp spans both hosts: each holds half of every split weight


def _held(x) -> int:
    """How many elements of the global array x this host holds (each distinct shard once)."""
    shards = {tuple((i.start, i.stop) for i in s.index): s.data.size for s in x.addressable_shards}
    return sum(shards.values())


def run(model_dir: str):
    """What this host computes and sees: embeddings, tokens, and where the weights and batches live."""
    import jax

    from grit_jax import GritLM

    model = GritLM.from_pretrained(model_dir, mesh=MESH)
    leaves = jax.tree.leaves(model.state)
    hidden, _, _ = model._hidden([[1, 5, 7]] * 8)
    return dict(
        process=jax.process_index(),
        processes=jax.process_count(),
        devices=jax.device_count(),
        weight_devices=sorted({len(x.sharding.device_set) for x in leaves}),
        # the distinct shards of each split weight on this host: never all of it
        whole_on_host=[x.shape for x in leaves if not x.sharding.is_fully_replicated and _held(x) >= x.size],
        split=sum(not x.sharding.is_fully_replicated for x in leaves),
        batch_devices=len(hidden.sharding.device_set),
        batch_on_this_host=_held(hidden) // (hidden.size // hidden.shape[0]),
        embeddings=model.encode(TEXTS, instruction=INSTRUCTION, batch_size=6).tolist(),
        tokens=model.generate(PROMPTS, max_new_tokens=10, eos_token_id=-1),
        rag=model.rag_generate(QUERY, DOC, mode="query-doc", max_new_tokens=6, eos_token_id=-1),
    )


def main(argv):
    initialize_from_env()
    model_dir, out = argv
    result = run(model_dir)
    with open(os.path.join(out, f"host{result['process']}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    print("gritlm_hosts: done", result["process"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
