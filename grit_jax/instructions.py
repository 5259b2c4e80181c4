"""The instructions GRIT embeds with at evaluation, as the reference's MTEB evaluation uses them.

Queries get `<|user|>\\n{instruction}\\n<|embed|>\\n`; documents of retrieval tasks get no instruction,
which is `<|embed|>\\n`. Task instructions are the E5 set the reference uses by default (its
`evaluation/eval_mteb.py`); a task absent from the table is evaluated with the generic instruction.
"""

from __future__ import annotations

GENERIC_RETRIEVAL = "Given a question, retrieve relevant documents that best answer the question"

# task name -> (query instruction, document instruction); "" is no instruction.
RETRIEVAL = {
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "CQADupstackRetrieval": "Given a question, retrieve detailed question descriptions from Stackexchange "
    "that are duplicates to the given question",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to the "
    "given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
}
# Tasks whose queries and documents are alike: both sides get the instruction.
SYMMETRIC = {
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SummEval": "Given a news summary, retrieve other semantically similar summaries",
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
}
STS = "Retrieve semantically similar text."


def gritlm_format(instruction: str) -> str:
    """The text before a GRIT embedding: the instruction as a user turn, then `<|embed|>`."""
    instruction = instruction.strip(": \n")
    return f"<|user|>\n{instruction}\n<|embed|>\n" if instruction else "<|embed|>\n"


def task_instructions(task: str | None, task_type: str | None = None) -> tuple[str, str]:
    """(query prefix, document prefix) for an MTEB task name, formatted for GRIT."""
    if task and task.startswith("CQADupstack"):
        task = "CQADupstackRetrieval"
    if task in RETRIEVAL:
        return gritlm_format(RETRIEVAL[task]), gritlm_format("")
    if task in SYMMETRIC:
        return (gritlm_format(SYMMETRIC[task]),) * 2
    if task_type == "STS":
        return (gritlm_format(STS),) * 2
    return gritlm_format(GENERIC_RETRIEVAL), gritlm_format("")
