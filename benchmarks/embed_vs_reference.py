"""grit-embed against the reference `gritlm` package (PyTorch) embedding the same documents with the same
random model: documents/s, tokens/s, their ratio, padding, and grit-embed on 8 faked CPU devices vs 1.

    JAX_PLATFORMS=cpu python -m benchmarks.embed_vs_reference [--docs 512 --batch_size 32 --max_length 512]

Needs `pip install --no-deps gritlm==1.0.2` (the `bench` extra; it imports only torch, transformers, tqdm).

One random Mistral (preset bench_embed_256's shape: hidden 256, 4 layers, 8 heads / 4 KV heads, MLP 768;
transformers' initialisation)
is saved as a Hugging Face directory with a byte-level BPE tokenizer.json trained on the documents (BOS
added by its post-processor, so both sides tokenize identically). The documents are docstrings of the
Python standard library (grit_jax.data.demo's corpus: summary and body), in a fixed shuffled order: a
real length mix. Both sides embed them with the document instruction `<|embed|>\\n`, mean pooling over
the text after it, bidirectional attention (the reference's attn="bbcc"), fp32, the same batch size and
max length: the reference's `GritLM.encode` (batches in input order, padded to the longest row) and
grit-embed's path (grit_jax.retrieval.embedding_store.embed_texts: texts packed several to a row, longest
first, grit_jax.inference.text_packing). Each side runs once to warm up (grit_jax compiles every shape it
needs then), then --repeats timed runs; the best counts. The embeddings are compared before any timing.
The 8-device figure is a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 and the
batches split over a data=8 mesh (GritLM(mesh=...)), against a 1-device subprocess run the same way.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np

from benchmarks.common import ROOT, cpu_env, hf_shape, module_command

DOCS_FILE = "documents.json"  # the main run's documents, for the device-count subprocesses
INSTRUCTION = "<|embed|>\n"  # gritlm_instruction(""): how the reference embeds documents
# The transformers MistralConfig fields taken from the preset (the rest are transformers' defaults).
MODEL = hf_shape(
    "bench_embed_256",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)


def documents(n: int) -> list[str]:
    from grit_jax.data.demo import stdlib_entries

    entries = stdlib_entries()
    docs = [f"{e[3]}\n\n{e[4]}" for kind in ("functions", "classes") for e in entries[kind]]
    order = np.random.default_rng(0).permutation(len(docs))
    return [docs[i] for i in order[:n]]


def write_model_dir(path: str, docs: list[str], vocab_size: int = 2000) -> str:
    """A random transformers Mistral and a BPE tokenizer.json (BOS <s> prepended) in one HF directory."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(docs, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(os.path.join(path, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=tok.get_vocab_size(), bos_token_id=1, eos_token_id=2, **MODEL)
    transformers.MistralForCausalLM(cfg).save_pretrained(path)
    return path


def timed(fns: dict, repeats: int):
    """{name: (output, best wall seconds, CPU seconds of that run)}: each fn once to warm up, then the fns
    in turn, `repeats` rounds, so that a change in the machine's load falls on both sides."""
    outs = {name: fn() for name, fn in fns.items()}  # compiles (grit_jax), allocates (torch)
    best = {name: (float("inf"), 0.0) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            best[name] = min(best[name], (wall, cpu))
    return {name: (outs[name], *best[name]) for name in fns}


def grit_model(path: str, devices: int):
    from grit_jax.inference.gritlm import GritLM

    mesh = {"data": devices} if devices > 1 else None
    return GritLM.from_pretrained(path, mode="embedding", pooling_method="mean", attn="bbcc", mesh=mesh)


def grit_encoder(path, docs, args, devices=1):
    """grit-embed's way of embedding `docs`, as a function; and the token length of every document."""
    from grit_jax.retrieval.embedding_store import embed_texts

    model = grit_model(path, devices)
    lengths = [len(model.tokenize(INSTRUCTION + d, True, args.max_length)) for d in docs]
    return lambda: embed_texts(model, docs, INSTRUCTION, args.batch_size, max_length=args.max_length), lengths


def reference_encoder(path, docs, args):
    import torch
    from gritlm import GritLM

    torch.set_num_threads(os.cpu_count())
    model = GritLM(
        path, mode="embedding", pooling_method="mean", attn="bbcc", device="cpu", torch_dtype=torch.float32
    )
    return lambda: model.encode(
        docs, instruction=INSTRUCTION, batch_size=args.batch_size, max_length=args.max_length
    )


def padding(lengths, batches) -> float:
    """The reference's padding: each batch right-padded to its longest row."""
    lengths = np.asarray(lengths)
    return 1 - lengths.sum() / sum(len(b) * int(lengths[b].max()) for b in batches)


def packed_padding(lengths, batch_size: int, devices: int = 1) -> float:
    """grit-embed's: the share of the slots of its packed passes (inference/text_packing) not a token."""
    from grit_jax.inference.text_packing import pack, real_share

    return 1 - real_share(lengths, pack(lengths, batch_size, devices))


def devices_subprocess(path: str, args, devices: int) -> dict:
    env = cpu_env(devices=devices)
    cmd = module_command("benchmarks.embed_vs_reference", "--grit_only", path, "--devices", str(devices))
    cmd += ["--docs", str(args.docs), "--batch_size", str(args.batch_size)]
    cmd += ["--max_length", str(args.max_length), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def grit_only(args):
    import jax

    with open(os.path.join(args.grit_only, DOCS_FILE), encoding="utf-8") as f:
        docs = json.load(f)
    encode, _ = grit_encoder(args.grit_only, docs, args, args.devices)
    emb, wall, cpu = timed({"grit": encode}, args.repeats)["grit"]
    print(json.dumps({"devices": jax.device_count(), "wall": wall, "cpu": cpu, "emb": emb[:4].tolist()}))


def row(name, n, tokens, wall, cpu, pad):
    return f"| {name} | {n / wall:.1f} | {tokens / wall:,.0f} | {wall:.2f} | {cpu:.2f} | {pad:.0%} |"


def against_reference(path, docs, encode, lengths, args):
    """Times both sides in one run, checks that they agree, prints the table; returns grit's embeddings."""
    runs = timed({"reference": reference_encoder(path, docs, args), "grit": encode}, args.repeats)
    (ref_emb, ref_wall, ref_cpu), (emb, wall, cpu) = runs["reference"], runs["grit"]
    diff = float(np.abs(emb - ref_emb).max())
    assert diff < 1e-4, f"embeddings differ from the reference's by {diff}"
    tokens = sum(lengths)
    size = args.batch_size
    in_order = [np.arange(i, min(i + size, len(docs))) for i in range(0, len(docs), size)]
    print(
        f"{len(docs)} documents, {tokens} tokens (median {int(np.median(lengths))}, max {max(lengths)}), "
        f"batch {size}, max_length {args.max_length}, {os.cpu_count()} CPU threads; "
        f"embeddings agree: max |diff| {diff:.1e}, min cosine {float((emb * ref_emb).sum(1).min()):.6f}"
    )
    print(
        "| way | docs/s | tokens/s | wall s | CPU s | padding (share of slots run) |\n"
        "|---|---|---|---|---|---|"
    )
    ref_pad = padding(lengths, in_order)
    print(row("reference gritlm.GritLM.encode (torch)", len(docs), tokens, ref_wall, ref_cpu, ref_pad))
    print(row("grit-embed (grit_jax, 1 device)", len(docs), tokens, wall, cpu, packed_padding(lengths, size)))
    print(
        f"grit-embed / reference: {ref_wall / wall:.2f}x documents/s (wall), {ref_cpu / cpu:.2f}x by CPU time"
    )
    return emb


def devices_8_vs_1(path, docs, emb, lengths, args):
    """grit-embed in two subprocesses, 1 and 8 faked CPU devices (a data=8 mesh), on the same documents."""
    one, eight = (devices_subprocess(path, args, d) for d in (1, 8))
    for r in (one, eight):
        pad = packed_padding(lengths, args.batch_size, r["devices"])
        np.testing.assert_allclose(np.asarray(r["emb"]), emb[:4], atol=1e-5)
        name = f"grit-embed, subprocess, {r['devices']} CPU device(s)"
        print(row(name, len(docs), sum(lengths), r["wall"], r["cpu"], pad))
    print(f"8 devices / 1 device: {one['wall'] / eight['wall']:.2f}x documents/s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grit_only", default="", help=argparse.SUPPRESS)  # the device-count subprocess
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--skip_devices", action="store_true", help="skip the 8-vs-1 device subprocesses")
    parser.add_argument("--skip_reference", action="store_true", help="only the 8-vs-1 device subprocesses")
    args = parser.parse_args()
    if args.grit_only:
        return grit_only(args)
    docs = documents(args.docs)
    with tempfile.TemporaryDirectory() as path:
        write_model_dir(path, docs)
        with open(os.path.join(path, DOCS_FILE), "w", encoding="utf-8") as f:
            json.dump(docs, f)
        encode, lengths = grit_encoder(path, docs, args)
        emb = encode() if args.skip_reference else against_reference(path, docs, encode, lengths, args)
        if not args.skip_devices:
            devices_8_vs_1(path, docs, emb, lengths, args)


if __name__ == "__main__":
    main()
