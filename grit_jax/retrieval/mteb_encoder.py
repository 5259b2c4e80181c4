"""A GritLM as an `mteb` encoder (mteb >= 2: `encode(inputs, *, task_metadata, hf_split, hf_subset,
prompt_type)`), with the instructions of the reference's MTEB evaluation (grit_jax.retrieval.instructions):
per
task for queries, none for the documents of retrieval tasks.

    import mteb
    from grit_jax.retrieval.mteb_encoder import GritMTEB
    model = GritMTEB("path/to/model")
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]), cache=None)

Needs the `eval` extra (`pip install -e '.[eval]'`).
"""

from __future__ import annotations

import os

from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from grit_jax.retrieval.embedding_store import embed_texts
from grit_jax.retrieval.instructions import task_instructions
from grit_jax.weights.fingerprint import model_fingerprint


class GritMTEB(AbsEncoder):
    """mteb's encoder interface over a GritLM (a loaded one, or a path given to GritLM.from_pretrained)."""

    def __init__(self, model, batch_size: int = 64, max_length: int = 512, name: str | None = None, **load):
        if isinstance(model, (str, os.PathLike)):
            from grit_jax.inference.gritlm import GritLM

            name = name or os.path.basename(os.path.normpath(os.fspath(model)))
            model = GritLM.from_pretrained(os.fspath(model), mode="embedding", **load)
        self.model, self.batch_size, self.max_length = model, batch_size, max_length
        self.mteb_model_meta = ModelMeta.create_empty(
            dict(
                name=f"grit_jax/{name or 'gritlm'}",
                revision=model_fingerprint(model),  # results are tied to these weights (mteb_run)
                similarity_fn_name=ScoringFunction.COSINE,
                embed_dim=model.config.hidden_size,
                use_instructions=True,
                framework=["JAX"],
            )
        )

    def instruction(self, task_metadata, prompt_type) -> str:
        """The text before each input: the document side's for documents, else the query side's."""
        query, document = task_instructions(task_metadata.name, task_metadata.type)
        return document if prompt_type == PromptType.document else query

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        instruction = self.instruction(task_metadata, prompt_type)
        return embed_texts(self.model, texts, instruction, self.batch_size, max_length=self.max_length)
