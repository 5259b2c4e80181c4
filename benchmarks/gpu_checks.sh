#!/usr/bin/env bash
# One pass of the GPU checks and benchmarks (run where a GPU is lent; results go to $OUT or ./gpu_out).
# The GPU image has jax 0.11.2 and flax 0.12.10 but no ml_collections: carry its wheel in .whl/ (installed if present).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
# Train-step throughput and MFU of a ~0.85B Mistral (bf16 compute, fp32 master weights, full remat), unified
# GRIT step: 64 queries x 256 + 128 passages x 512 (bidirectional) + 16 x 1024 generative; without and with
# GradCache chunking (16 sequences per chunk) — the ratio is the cost of the recomputation.
for chunk in 0 16; do
  timeout 240 python3 -m benchmarks.train_step --config configs/gritlm.py:7b --config.model.preset=mistral_1b \
    --config.data.embedding_batch_size=64 --config.data.generative_batch_size=16 --config.data.query_max_len=256 \
    --config.data.passage_max_len=512 --config.data.generative_max_len=1024 \
    --config.objective.generative_accumulation_steps=1 --config.objective.embedding_chunk_size=$chunk \
    --steps 5 2>&1 | grep -v "^W0000\|^I0000" | tee "$OUT/train_step_chunk$chunk.txt"
done
# RAG caching speed-up on the GPU (the paper: 31% doc caching, 33% query caching on GPU).
timeout 180 python3 -m benchmarks.rag_cache --repeats 3 2>&1 | tail -20 | tee "$OUT/rag_cache.txt"
# Model numerics on the GPU against transformers (torch on the CPU), fp32 matmuls at full precision.
JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 python3 -m pytest -q -x tests/integration/test_model.py \
  -k "matches_transformers" 2>&1 | tail -5 | tee "$OUT/test_model_gpu.txt"
