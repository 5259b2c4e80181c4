"""`grit-eval mteb` runs a retrieval task (built here, no download) with the reference's instructions to
mteb's own result files, on a mesh, and a second run resumes: the finished task is not run again. Results
belong to the weights that made them: a cut result file is run again, and so is a newer export's task."""

import glob
import json
import shutil

import pytest
import safetensors.numpy
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from grit_jax.programs import grit_eval
from grit_jax.retrieval import mteb_encoder, mteb_run
from tests.grit_fixtures import make_hf_dir, make_tokenizer, tokenizer_texts

TEXTS = [t[:200] for t in tokenizer_texts() if t.strip()]


class LocalNFCorpus(AbsTaskRetrieval):
    """A retrieval task under a name the reference has an instruction for; its data is built here."""

    metadata = TaskMetadata(
        name="NFCorpus",
        type="Retrieval",
        description="Local test data.",
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
        docs = [{"id": f"d{i}", "title": "", "text": TEXTS[i]} for i in range(24)]
        queries = [{"id": f"q{i}", "text": TEXTS[30 + i][:60]} for i in range(4)]
        qrels = {f"q{i}": {f"d{(5 * i) % 24}": 1} for i in range(4)}
        split = RetrievalSplitData(
            queries=Dataset.from_list(queries),
            corpus=Dataset.from_list(docs),
            relevant_docs=qrels,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb_cli")
    make_tokenizer(root / "tokenizer.model")
    return make_hf_dir(root / "hf", root / "tokenizer.model")[1]


@pytest.mark.slow
def test_mteb_program_writes_mteb_results_and_resumes(hf_dir, tmp_path, monkeypatch, capsys):
    # The registry lookup answers the local task (mteb.get_tasks would download NFCorpus).
    monkeypatch.setattr(mteb_run, "resolve_tasks", lambda names, benchmark: [LocalNFCorpus()])
    calls, embed = [], mteb_encoder.embed_texts
    monkeypatch.setattr(
        mteb_encoder,
        "embed_texts",
        lambda m, texts, instruction, *a, **k: (
            calls.append(instruction) or embed(m, texts, instruction, *a, **k)
        ),
    )
    out = tmp_path / "results"
    argv = [
        "mteb",
        "--model",
        hf_dir,
        "--tasks",
        "NFCorpus",
        "--out",
        str(out),
        "--name",
        "tiny",
        "--mesh",
        "data=-1",
    ]
    assert grit_eval.run(argv) == 0
    first = capsys.readouterr().out
    [result] = list(out.glob("results/grit_jax__tiny/*/NFCorpus.json"))  # mteb's layout
    assert result.parent.name in first  # the revision is the weights fingerprint, said at the start
    saved = json.loads(result.read_text())
    assert saved["task_name"] == "NFCorpus" and "ndcg_at_10" in saved["scores"]["test"][0]
    assert saved["scores"]["test"][0]["main_score"] == saved["scores"]["test"][0]["ndcg_at_10"]
    # the reference's NFCorpus instruction on the queries, none on the documents
    assert (
        "<|user|>\nGiven a question, retrieve relevant documents that best answer the question\n<|embed|>\n"
        in calls
    )
    assert "<|embed|>\n" in calls
    assert "[1/1] NFCorpus: ndcg_at_10 " in first
    calls.clear()
    stamp = result.stat().st_mtime_ns
    assert grit_eval.run(argv) == 0  # the second run resumes: nothing to embed
    assert calls == [] and result.stat().st_mtime_ns == stamp
    assert "(already in results, not run)" in capsys.readouterr().out


def test_unknown_task_fails_before_loading(capsys):
    argv = ["mteb", "--model", "/nonexistent", "--tasks", "SciFactt", "--out", "/tmp/x"]
    assert grit_eval.run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("grit-eval: error: --tasks") and "SciFactt" in err[0]


@pytest.mark.slow
def test_results_belong_to_the_weights_that_made_them(hf_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mteb_run, "resolve_tasks", lambda names, benchmark: [LocalNFCorpus()])
    model, out = tmp_path / "model", tmp_path / "results"
    shutil.copytree(hf_dir, model)
    argv = ["mteb", "--model", str(model), "--tasks", "NFCorpus", "--out", str(out), "--name", "tiny"]
    assert grit_eval.run(argv) == 0
    [first] = list(out.glob("results/grit_jax__tiny/*/NFCorpus.json"))
    score = json.loads(first.read_text())["scores"]["test"][0]["main_score"]

    first.write_text(first.read_text()[:200])  # cut mid-write
    capsys.readouterr()
    assert grit_eval.run(argv) == 0
    captured = capsys.readouterr()
    [warning] = [line for line in captured.err.splitlines() if "damaged" in line]  # (mteb's bars aside)
    assert warning.startswith(f"grit-eval: {first}: damaged (") and "Traceback" not in captured.err
    assert "already in results" not in captured.out and f"ndcg_at_10 {score:.4f}" in captured.out
    assert json.loads(first.read_text())["scores"]["test"][0]["main_score"] == score
    assert first.with_name("NFCorpus.json.damaged").exists()

    for file in glob.glob(str(model / "*.safetensors")):  # a newer export into the same dir
        tensors = safetensors.numpy.load_file(file)
        safetensors.numpy.save_file({k: v + 1e-2 for k, v in tensors.items()}, file, {"format": "pt"})
    assert grit_eval.run(argv) == 0
    assert "already in results" not in capsys.readouterr().out  # run again, not the older export's
    assert len(list(out.glob("results/grit_jax__tiny/*/NFCorpus.json"))) == 2
