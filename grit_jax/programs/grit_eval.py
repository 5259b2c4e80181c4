"""`grit-eval` (or `python -m grit_jax.programs.grit_eval`): measure a GritLM.

    grit-eval retrieval --model MODEL_DIR --data beir/scifact --out scifact.json

    grit-eval mteb --model MODEL_DIR --tasks SciFact NFCorpus --out mteb_results  (or --benchmark NAME)

`mteb` runs MTEB tasks with the reference's per-task instructions into mteb's result layout, resuming
(grit_jax.retrieval.mteb_run). `retrieval` embeds a BEIR directory (corpus.jsonl, queries.jsonl,
qrels/test.tsv), ranks the corpus for every judged query and prints nDCG@10, MRR@10 and recall@100
(grit_jax.retrieval.ranking) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from grit_jax import hardware, storage
from grit_jax.cli import ArgumentParser, run_command
from grit_jax.errors import UsageError
from grit_jax.retrieval.instructions import RETRIEVAL, task_instructions
from grit_jax.retrieval.ranking import DEFAULT_DOC_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="grit-eval", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("retrieval", help="nDCG@10, MRR@10, recall@100 on a BEIR directory")
    r.add_argument("--model", required=True, metavar="PATH", help="Hugging Face dir or orbax checkpoint")
    r.add_argument(
        "--adapter", default=None, metavar="DIR", help="a PEFT LoRA adapter dir trained on --model"
    )
    r.add_argument("--data", required=True, metavar="DIR", help="corpus.jsonl, queries.jsonl, qrels/")
    r.add_argument("--split", default="test", help="the qrels file: qrels/SPLIT.tsv")
    r.add_argument(
        "--task",
        default=None,
        help=f"take the instructions of this MTEB task from the reference's table ({', '.join(RETRIEVAL)})",
    )
    r.add_argument(
        "--query_instruction",
        default=None,
        help=f"text before each query (default {DEFAULT_QUERY_INSTRUCTION!r})",
    )
    r.add_argument(
        "--doc_instruction",
        default=None,
        help=f"text before each document (default {DEFAULT_DOC_INSTRUCTION!r}: no instruction)",
    )
    r.add_argument(
        "--drop_missing",
        action="store_true",
        help="drop qrels judgements of documents not in the corpus (counted); without it they are an error",
    )
    r.add_argument("--batch_size", type=int, default=64)
    r.add_argument("--max_length", type=int, default=512)
    r.add_argument("--dtype", default="float32")
    r.add_argument(
        "--mesh", default=None, metavar="AXIS=N,...", help="shard the model: data=-1, fsdp=4,tensor=2"
    )
    r.add_argument("--out", default=None, metavar="FILE", help="JSON results (default: printed only)")
    r.add_argument("--run_out", default=None, metavar="FILE", help="the top 100 per query as JSON")
    m = commands.add_parser("mteb", help="MTEB tasks with the reference's instructions, resumable")
    m.add_argument("--model", required=True, metavar="PATH", help="Hugging Face dir or orbax checkpoint")
    m.add_argument("--tasks", nargs="*", default=[], metavar="TASK", help="mteb task names, e.g. SciFact")
    m.add_argument("--benchmark", default=None, help='all tasks of an mteb benchmark, e.g. "MTEB(eng, v1)"')
    m.add_argument("--out", required=True, metavar="DIR", help="mteb's result cache: OUT/results/...")
    m.add_argument("--name", default=None, help="the model name in the results (default: the dir's name)")
    for flag, default in (("--batch_size", 64), ("--max_length", 512)):
        m.add_argument(flag, type=int, default=default)
    m.add_argument("--dtype", default="float32")
    m.add_argument("--mesh", default=None, metavar="AXIS=N,...", help="shard the model: data=-1, fsdp=4")
    return parser


def run(argv=None) -> int:
    hardware.quiet_platform()
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    return run_command("grit-eval", lambda: _run(args))


def _run(args):
    if args.command == "mteb":
        return _mteb(args)
    if args.task is not None and args.task not in RETRIEVAL and not args.task.startswith("CQADupstack"):
        raise UsageError(f"--task {args.task!r}: not in the table; known: {', '.join(RETRIEVAL)}")
    query_default, doc_default = task_instructions(args.task)
    query_instruction = query_default if args.query_instruction is None else args.query_instruction
    doc_instruction = doc_default if args.doc_instruction is None else args.doc_instruction
    from grit_jax.inference.gritlm import GritLM
    from grit_jax.inference.placement import local_mesh
    from grit_jax.retrieval.ranking import evaluate_retrieval, load_beir

    mesh = local_mesh(args.mesh)
    beir = load_beir(args.data, args.split, args.drop_missing)  # bad data fails before the model loads
    model = GritLM.from_pretrained(
        args.model, mode="embedding", dtype=args.dtype, mesh=mesh, adapter=args.adapter
    )
    result, ranking = evaluate_retrieval(
        model,
        beir,
        query_instruction,
        doc_instruction,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    from grit_jax.weights.fingerprint import model_fingerprint

    result.update(
        model=os.fspath(storage.as_path(args.model)),  # a gs:// model stays a URL
        model_weights=model_fingerprint(model),  # which weights these figures belong to
        data=os.path.abspath(args.data),
        query_instruction=query_instruction,
        doc_instruction=doc_instruction,
    )
    text = json.dumps(result, indent=1)
    print(text, flush=True)
    for path, content in ((args.out, text), (args.run_out, json.dumps(ranking))):
        if path:
            storage.write_text(path, content + "\n")  # whole or not at all


def _mteb(args):
    try:
        import mteb  # noqa: F401 (the `eval` extra; not installed by a plain `pip install grit_jax`)
    except ImportError:
        raise UsageError("grit-eval mteb needs mteb: pip install 'grit_jax[eval]'") from None
    from grit_jax.retrieval import mteb_run

    tasks = mteb_run.resolve_tasks(args.tasks, args.benchmark)  # a misspelled task fails before loading
    from grit_jax.inference.gritlm import GritLM
    from grit_jax.inference.placement import local_mesh

    model = GritLM.from_pretrained(args.model, mode="embedding", dtype=args.dtype, mesh=local_mesh(args.mesh))
    name = args.name or os.path.basename(os.path.normpath(args.model))
    mteb_run.evaluate_tasks(
        model, tasks, args.out, name, batch_size=args.batch_size, max_length=args.max_length
    )


if __name__ == "__main__":
    sys.exit(run())
