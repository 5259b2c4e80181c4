"""Whether a training checkpoint step is intact, checked before it is used.

Orbax marks a step complete once every host wrote its files; nothing tells later whether a file was since
truncated or removed, and a damaged step then fails deep inside tensorstore, or is misread as a config
mismatch. So once a save has finished, process 0 writes FILES into the step: every file of the step with
its size (one listing, no file read back: a checkpoint can be many GB). A step is intact when every listed
file is there with that size. A step without FILES (killed between orbax's commit and our listing, or
written before FILES existed) gets the structural check only: every item there, each orbax PyTree item
with its `_METADATA` and `manifest.ocdbt`. Nothing here knows what the items hold, so items added
later are checked the same way.
"""

from __future__ import annotations

import json

from grit_jax import storage

FILES = "grit_files.json"
PYTREE_MARKERS = ("_METADATA", "manifest.ocdbt")  # an orbax PyTree item cannot be read without these
DAMAGED = ".damaged"  # a damaged step is renamed <step>.damaged: orbax lists digit names only


def seal(step_dir: str) -> None:
    """Records every file of a finished step with its size (the step's FILES)."""
    sizes = {name: size for name, size in storage.file_sizes(step_dir).items() if name != FILES}
    storage.write_text(storage.join(step_dir, FILES), json.dumps(sizes, indent=0, sort_keys=True))


def is_sealed(step_dir: str) -> bool:
    return storage.isfile(storage.join(step_dir, FILES))


def problem(step_dir: str, items: tuple[str, ...]) -> str | None:
    """What is wrong with a step, in a few words, or None when it is intact."""
    sizes = storage.file_sizes(step_dir)
    if FILES in sizes:
        try:
            written = json.loads(storage.read_text(storage.join(step_dir, FILES)))
        except ValueError:
            return f"{FILES} is not valid JSON"
        for name, size in sorted(written.items()):
            if name not in sizes:
                return f"{name} is missing"
            if sizes[name] != size:
                return f"{name} has {sizes[name]} bytes, {size} were written"
        return None
    for item in items:
        files = {n.split("/", 1)[1] for n in sizes if n.startswith(item + "/")}
        if not files:
            return f"item {item!r} is missing"
        if any("/" in f for f in files):  # data files in subdirectories: an orbax PyTree item
            missing = [m for m in PYTREE_MARKERS if m not in files]
            if missing:
                return f"{item}/{missing[0]} is missing"
    return None


def set_aside(step_dir: str) -> str:
    """Renames a damaged step to <step>.damaged (kept for a look, never listed as a step again)."""
    target = step_dir.rstrip("/") + DAMAGED
    n = 1
    while storage.isdir(target):
        n += 1
        target = f"{step_dir.rstrip('/')}{DAMAGED}{n}"
    storage.move(step_dir, target)
    return target
