"""The files of a prepared data directory (grit_jax.data.sources): each source's file sizes, recorded in
manifest.json by grit-data prepare and checked by a training run, so data changed after it was prepared
is refused, not trained on; and the removal of the sources a new manifest no longer names, and of what a
failed prepare built."""

from __future__ import annotations

import os
import shutil

from grit_jax.errors import DataError


def sizes(out_dir: str, written: str) -> dict[str, int]:
    """{file relative to out_dir: size} of a written source: what a training run checks is unchanged."""
    root = os.path.join(out_dir, written)
    return {
        os.path.relpath(os.path.join(d, n), out_dir): os.path.getsize(os.path.join(d, n))
        for d, _, names in os.walk(root)
        for n in sorted(names)
    }


def check(data_dir: str, manifest: dict) -> None:
    """DataError when a training source's files are not those prepare wrote (sizes; sources prepared
    before the sizes were recorded are not checked)."""
    written = [
        e.get("files") or {} for kind in ("embedding", "generative") for e in manifest["train"].get(kind, [])
    ]
    for name, size in ((n, s) for files in written for n, s in files.items()):
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise DataError(
                f"{path}: missing (the prepared data changed after grit-data prepare; prepare again)"
            )
        if os.path.getsize(path) != size:
            raise DataError(
                f"{path}: {os.path.getsize(path)} bytes, grit-data prepare wrote {size} (the prepared data "
                "changed after it was prepared; prepare again)"
            )


def _source_roots(manifest: dict) -> set[str]:
    return {
        os.path.dirname(e["lengths"])
        for split in ("train", "eval")
        for kind in ("embedding", "generative")
        for e in manifest.get(split, {}).get(kind, [])
        if e.get("lengths")
    }


def remove_unused(out_dir: str, old: dict, new: dict) -> None:
    """The directories of the previous manifest's sources that the new one no longer names."""
    for root in sorted(_source_roots(old) - _source_roots(new)):
        shutil.rmtree(os.path.join(out_dir, root), ignore_errors=True)


def remove_partial(directories: list[str], manifest_tmp: str) -> None:
    """What a failed prepare built (its new source directories, a manifest not swapped in): nothing of it
    is left to be taken for a dataset."""
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    if os.path.exists(manifest_tmp):
        os.remove(manifest_tmp)
