"""mteb evaluates a grit_jax model through GritMTEB on a retrieval task built here (no download): the
reference's instructions reach the model (the task's for queries, none for documents) and mteb's nDCG@10
equals grit_jax.retrieval.ranking's on the same embeddings."""

import mteb
import numpy as np
import pytest
from datasets import Dataset
from mteb import evaluate
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType

from grit_jax import GritLM
from grit_jax.retrieval import mteb_encoder as mteb_model
from grit_jax.retrieval.instructions import RETRIEVAL, SAME_BOTH_SIDES, STS, gritlm_format, task_instructions
from grit_jax.retrieval.metrics import score_run
from grit_jax.retrieval.mteb_encoder import GritMTEB
from grit_jax.retrieval.ranking import search
from tests.grit_fixtures import make_hf_dir, make_tokenizer, tokenizer_texts

TEXTS = [t[:200] for t in tokenizer_texts() if t.strip()]
DOCS = [{"id": f"d{i}", "title": f"T{i}" if i % 3 else "", "text": TEXTS[i]} for i in range(40)]
QUERIES = [{"id": f"q{i}", "text": TEXTS[40 + i][:60]} for i in range(6)]
QRELS = {f"q{i}": {f"d{(5 * i) % 40}": 1, f"d{(5 * i + 3) % 40}": 1} for i in range(6)}


class LocalSciFact(AbsTaskRetrieval):
    """A retrieval task named as one the reference has an instruction for, with data built here."""

    metadata = TaskMetadata(
        name="SciFact",
        type="Retrieval",
        description="Local test data under a name from the instruction table.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": "NA", "revision": "NA"},
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2024-01-01", "2024-01-01"),
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        dialect=["Written"],
        sample_creation="found",
        bibtex_citation="",
    )

    def load_data(self, num_proc=None, **kwargs):
        split = RetrievalSplitData(
            queries=Dataset.from_list(QUERIES),
            corpus=Dataset.from_list(DOCS),
            relevant_docs=QRELS,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb")
    make_tokenizer(root / "tokenizer.model")
    _, path = make_hf_dir(root / "hf", root / "tokenizer.model")
    return GritLM.from_pretrained(path, mode="embedding")


def test_mteb_retrieval_task_with_the_reference_instructions(model, monkeypatch):
    seen, embed_texts = [], mteb_model.embed_texts

    def recording(m, texts, instruction, *args, **kwargs):
        seen.append((instruction, len(texts)))
        return embed_texts(m, texts, instruction, *args, **kwargs)

    monkeypatch.setattr(mteb_model, "embed_texts", recording)
    result = evaluate(GritMTEB(model, batch_size=8), LocalSciFact(), cache=None, show_progress_bar=False)
    query_instruction = gritlm_format(RETRIEVAL["SciFact"])
    assert sorted(seen) == sorted([(query_instruction, len(QUERIES)), ("<|embed|>\n", len(DOCS))])
    scores = result.task_results[0].scores["test"][0]
    # The same figure from our own code on embeddings made without mteb.
    docs = model.encode([f"{d['title']} {d['text']}".strip() for d in DOCS], instruction="<|embed|>\n")
    queries = model.encode([q["text"] for q in QUERIES], instruction=query_instruction)
    hits = search(queries, docs, [d["id"] for d in DOCS], k=100)
    ours = score_run({q["id"]: h for q, h in zip(QUERIES, hits)}, QRELS)
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert scores["recall_at_100"] == pytest.approx(ours["recall@100"], abs=1e-4)
    assert 0 < scores["ndcg_at_10"] < 1
    assert np.isfinite(scores["main_score"])


# The reference's e5 table (evaluation/eval_mteb.py): tasks per MTEB type.
REFERENCE_COUNTS = {
    "Classification": 12,
    "Clustering": 11,
    "PairClassification": 3,
    "Reranking": 4,
    "STS": 10,
    "Summarization": 1,
}


def test_every_task_type_of_the_reference_table_gets_its_instruction(model):
    """Each name of the table is a task mteb knows, of the type the reference files it under; retrieval
    embeds documents without instruction, every other type embeds both sides with the task's."""
    assert {t: len(table) for t, table in SAME_BOTH_SIDES.items()} == REFERENCE_COUNTS
    assert len(RETRIEVAL) == 15
    encoder = GritMTEB(model)
    tables = [("Retrieval", RETRIEVAL)] + list(SAME_BOTH_SIDES.items())
    for task_type, table in tables:
        for name, text in table.items():
            metadata = mteb.get_task(name).metadata
            assert metadata.type == task_type, name
            query = encoder.instruction(metadata, PromptType.query)
            document = encoder.instruction(metadata, PromptType.document)
            assert query == f"<|user|>\n{text}\n<|embed|>\n"
            assert document == ("<|embed|>\n" if task_type == "Retrieval" else query), name
    banking = encoder.instruction(mteb.get_task("Banking77Classification").metadata, None)
    assert banking == "<|user|>\nGiven a online banking query, find the corresponding intents\n<|embed|>\n"
    # mteb's later versions of a table's task, and CQADupstack's subsets, get that task's instruction.
    for name, same_as in [
        ("TwentyNewsgroupsClustering.v2", "TwentyNewsgroupsClustering"),
        ("CQADupstackAndroidRetrieval", "CQADupstackRetrieval"),
    ]:
        assert task_instructions(name) == task_instructions(same_as) != task_instructions(None)
    # Outside the table (the reference skips those): STS's instruction for STS, else the generic one.
    assert task_instructions("NotATask", "STS") == (f"<|user|>\n{STS}\n<|embed|>\n",) * 2
    assert task_instructions("NotATask", "Classification")[1] == "<|embed|>\n"
