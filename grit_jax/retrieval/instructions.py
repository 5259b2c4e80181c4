"""The instructions GRIT embeds with at evaluation, as the reference's MTEB evaluation uses them.

Queries get `<|user|>\\n{instruction}\\n<|embed|>\\n`; documents of retrieval tasks get no instruction,
which is `<|embed|>\\n`; every other task type (classification, clustering, pair classification,
reranking, STS, summarization) embeds all its texts with the task's instruction. Task instructions are the
E5 set the reference uses by default (its `evaluation/eval_mteb.py`). A task absent from the table, which
the reference skips, gets the STS instruction if it is an STS task and else the generic retrieval one.
"""

from __future__ import annotations

import re

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
# Every other task type embeds all its texts with the task's instruction (the reference sets it on
# `encode`, which serves both sides). By MTEB task type, as the reference's table is laid out.
SAME_BOTH_SIDES = {
    "Classification": {
        "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either "
        "counterfactual or not-counterfactual",
        "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
        "AmazonReviewsClassification": "Classify the given Amazon review into its appropriate rating "
        "category",
        "Banking77Classification": "Given a online banking query, find the corresponding intents",
        "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of "
        "the six emotions: anger, fear, joy, love, sadness, and surprise",
        "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB "
        "dataset",
        "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
        "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
        "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented "
        "conversation",
        "MTOPIntentClassification": "Classify the intent of the given utterance in task-oriented "
        "conversation",
        "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
        "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either "
        "positive, negative, or neutral",
    },
    "Clustering": {
        "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles "
        "and abstracts",
        "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
        "BiorxivClusteringP2P": "Identify the main category of Biorxiv papers based on the titles and "
        "abstracts",
        "BiorxivClusteringS2S": "Identify the main category of Biorxiv papers based on the titles",
        "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and "
        "abstracts",
        "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
        "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
        "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
        "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
        "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given "
        "paragraphs",
        "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    },
    "PairClassification": {
        "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
        "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
        "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    },
    "Reranking": {
        "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
        "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
        "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
        "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    },
    "Summarization": {"SummEval": "Given a news summary, retrieve other semantically similar summaries"},
}
STS = "Retrieve semantically similar text."  # the reference's instruction for every STS task
SAME_BOTH_SIDES["STS"] = {
    name: STS for name in "STS12 STS13 STS14 STS15 STS16 STS17 STS22 BIOSSES SICK-R STSBenchmark".split()
}
_SAME = {name: text for table in SAME_BOTH_SIDES.values() for name, text in table.items()}


def gritlm_format(instruction: str) -> str:
    """The text before a GRIT embedding: the instruction as a user turn, then `<|embed|>`."""
    instruction = instruction.strip(": \n")
    return f"<|user|>\n{instruction}\n<|embed|>\n" if instruction else "<|embed|>\n"


def task_instructions(task: str | None, task_type: str | None = None) -> tuple[str, str]:
    """(query prefix, document prefix) for an MTEB task name, formatted for GRIT. A later version of a
    task in the table (mteb's `NAME.v2`) gets that task's instruction."""
    if task and task.startswith("CQADupstack"):
        task = "CQADupstackRetrieval"
    base = re.sub(r"\.v\d+$", "", task) if task else task
    if base in RETRIEVAL:
        return gritlm_format(RETRIEVAL[base]), gritlm_format("")
    if base in _SAME:
        return (gritlm_format(_SAME[base]),) * 2
    if task_type == "STS":
        return (gritlm_format(STS),) * 2
    return gritlm_format(GENERIC_RETRIEVAL), gritlm_format("")
