"""GRIT data: the reference's JSONL formats -> tokenized TFDS array_record -> grain host batches.

- ``format``: the prompt formats (embedding with or without instruction, chats), token by token.
- ``tokenizer``: the sentencepiece tokenizer interface (and training one for the demo).
- ``sources``: ``grit-data prepare``: validate JSONL, tokenize once, write one TFDS dataset per file.
- ``pipeline``: the grain pipeline: single-source global batches, hard negatives, host sharding,
  a state that resumes at the exact next batch; held-out evaluation arrays.
- ``demo``, ``stdlib_docs``: the quick start's corpus, built from the Python standard library.
- ``synthetic``: random batches of a config's shapes (tests, benchmarks).

The ``data`` config group and its defaults are in grit_jax/run_config.py.
"""
