"""Tokenized GRIT sources as TFDS array_record datasets (no TensorFlow needed): written once by
`grit-data prepare`, read with random access by the grain pipeline."""

from __future__ import annotations

import contextlib
import io
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

TFDS_VERSION = "1.0.0"


def _sequence(dtype):
    return tfds.features.Tensor(shape=(None,), dtype=dtype)


def _features(kind: str):
    scalar = tfds.features.Scalar(dtype=np.int32)
    if kind == "embedding":
        return tfds.features.FeaturesDict(
            {
                "query": _sequence(np.int32),
                "query_instruction_len": scalar,
                "passages": _sequence(np.int32),
                "passage_lens": _sequence(np.int32),
                "passage_instruction_lens": _sequence(np.int32),
                "num_pos": scalar,
            }
        )
    return tfds.features.FeaturesDict(
        {"tokens": _sequence(np.int32), "targets": _sequence(np.uint8), "last_start": scalar}
    )


class GritSource(tfds.core.GeneratorBasedBuilder):
    """One tokenized GRIT source file (embedding or generative) as an array_record dataset."""

    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES = {TFDS_VERSION: "Token ids of the reference's JSONL formats."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # tfds' lookup needs importlib_resources; nothing is read from there
        return None

    def __init__(self, *, kind: str, examples: list, **kwargs):
        self._kind, self._examples = kind, examples
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=_features(self._kind))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield from enumerate(self._examples)


def write_tfds(examples: list, kind: str, name: str, data_dir: str) -> str:
    """Writes examples as a TFDS array_record dataset; returns its directory."""
    tfds.disable_progress_bar()
    config = tfds.core.BuilderConfig(name=name, version=TFDS_VERSION)
    absl_logging = logging.getLogger("absl")
    level = absl_logging.level
    absl_logging.setLevel(logging.ERROR)  # "Using custom data configuration"
    try:
        builder = GritSource(
            kind=kind, examples=examples, config=config, data_dir=data_dir, file_format="array_record"
        )
        with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading and preparing ..."
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False, verify_ssl=False)
            )
    finally:
        absl_logging.setLevel(level)
    return os.fspath(builder.data_path)


def open_source(directory: str):
    """Random-access data source (len, [i]) of a prepared dataset directory."""
    return tfds.builder_from_directory(directory).as_data_source(split="train")
