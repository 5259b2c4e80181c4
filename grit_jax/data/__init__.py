"""GRIT data: the reference's JSONL formats -> tokenized TFDS array_record -> grain host batches.

Prepare once (validates, tokenizes, writes one dataset per source file; see `grit-data prepare -h`):
    python -m grit_jax.data prepare --embedding DIR --generative FILE --tokenizer tokenizer.model --out OUT
or, for the demo corpus (stdlib docstrings, trained tokenizer): `demo.prepare_demo_data(OUT)`.

Training:
    it = make_train_iterator(config.data, tokenizer, jax.process_index(), jax.process_count(), mode)
    batch = next(it)            # this host's rows of the global batch, CONTRACTS.md "Batch"
    state = it.get_state()      # JSON-serialisable; it.set_state(state) resumes at the next batch
Evaluation (held-out split written by `prepare --eval_embedding/--eval_generative`):
    eval_retrieval_arrays(config.data) -> dict of query_*/passage_* arrays + relevant [Nq, Np] (or None)
    eval_generative_batches(config.data) -> list of gen_* batches

Config fields (`default_data_config()`, defaults in brackets):
  data_dir [""]             prepared directory (holds manifest.json and tokenizer.model)
  tokenizer [""]            sentencepiece model; "" = <data_dir>/tokenizer.model
  embedding_batch_size [2048], generative_batch_size [256]   global batch sizes (divisible by hosts)
  query_max_len [256], passage_max_len [2048], generative_max_len [2048]   padded lengths; must not
                            exceed the limits the data was prepared with
  train_group_size [2]      passages per query: 1 positive + G-1 hard negatives
  seed [0], shuffle [True]  sampling seed; shuffle=False keeps file order (tests)
  use_unique_indices [True] generative stream sampled without replacement, refilled when exhausted;
                            False = independent draws with replacement
  prefixlm [False]          train only on the last assistant turn
  num_threads [4], prefetch_buffer_size [8]   grain reader threads / batches prefetched per host
  demo_corpus [False], demo_vocab_size [1024]  train.py builds `demo.prepare_demo_data` into
                            WORKDIR/data when data_dir is empty (lengths = the *_max_len fields)
"""

import importlib

import ml_collections

# Public names and the modules that define them, imported on first use: the tokenizer and the prompt
# formats (inference) need neither grain nor tensorflow-datasets.
_EXPORTS = {
    "embed_prefix": "format",
    "encode_chat": "format",
    "encode_embedding": "format",
    "TrainIterator": "pipeline",
    "eval_generative_batches": "pipeline",
    "eval_retrieval_arrays": "pipeline",
    "load_tokenizer": "pipeline",
    "make_train_iterator": "pipeline",
    "DataError": "sources",
    "prepare": "sources",
    "read_manifest": "sources",
    "Tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"grit_jax.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'grit_jax.data' has no attribute {name!r}")


def default_data_config() -> ml_collections.ConfigDict:
    """The `data` config group with its defaults (the paper's 7B recipe for sizes and lengths)."""
    return ml_collections.ConfigDict(
        {
            "data_dir": "",
            "tokenizer": "",
            "embedding_batch_size": 2048,
            "generative_batch_size": 256,
            "query_max_len": 256,
            "passage_max_len": 2048,
            "generative_max_len": 2048,
            "train_group_size": 2,
            "seed": 0,
            "shuffle": True,
            "use_unique_indices": True,
            "prefixlm": False,
            "num_threads": 4,
            "prefetch_buffer_size": 8,
            "demo_corpus": False,
            "demo_vocab_size": 1024,
        }
    )
