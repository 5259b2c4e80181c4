"""The one place a user's path becomes a path object: a local path or a `gs://` URL alike.

Local paths are made absolute (`gs:/bucket`, one slash, is refused: it would be a local dir for one
library and a bucket for another); `gs://bucket/...` goes through etils.epath, whose gs:// backend without
TensorFlow is fsspec's gcsfs (credentials from the machine, `STORAGE_EMULATOR_HOST` for an emulator).
Arrays go through tensorstore's own kvstore (`kvstore()`: its `gcs` driver, `TENSORSTORE_GCS_HTTP_URL`
for an emulator). Never `os.path` on a URL: `os.path.abspath("gs://b/r")` is a local `<cwd>/gs:/b/r`.

array_record (the prepared training data) reads local files only, so a `gs://` data directory is
copied to this host's local disk once per run (`local_copy`) and written locally then uploaded
(`upload_dir`).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile

from etils import epath

from grit_jax.errors import UsageError

SCHEMES = ("gs",)  # what gcsfs and tensorstore's gcs driver both serve


def is_url(path) -> bool:
    """Whether a path is a URL; `gs:/bucket` (one slash) is refused, not read as a local dir `gs:`."""
    text = os.fspath(path)
    one_slash = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):/(?!/)", text)
    if one_slash:
        scheme = one_slash.group(1)
        raise UsageError(
            f"{text}: a URL needs two slashes ({scheme}://BUCKET/PATH); for a local path write ./{text}"
        )
    return "://" in text


def as_path(path, what: str = "path") -> epath.Path:
    """An epath.Path for a local path (made absolute) or a gs:// URL; UsageError for other URLs."""
    text = os.fspath(path)
    if not is_url(text):
        return epath.Path(os.path.abspath(text))
    scheme = text.split("://", 1)[0]
    if scheme not in SCHEMES or not text.split("://", 1)[1].strip("/"):
        raise UsageError(f"{what}={text}: expected a local path or gs://BUCKET/PATH")
    return epath.Path(text)


def join(path, *parts: str) -> str:
    """`path/part/...` as a string (configs and messages keep strings)."""
    return os.fspath(as_path(path).joinpath(*parts))


def isfile(path) -> bool:
    return as_path(path).is_file()


def isdir(path) -> bool:
    return as_path(path).is_dir()


def read_text(path) -> str:
    return as_path(path).read_text(encoding="utf-8")


def write_text(path, text: str) -> None:
    """Whole-file write: a local file is replaced atomically, a GCS object is replaced by its upload."""
    target = as_path(path)
    if is_url(path):
        target.write_text(text, encoding="utf-8")
        return
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def makedirs(path) -> None:
    as_path(path).mkdir(parents=True, exist_ok=True)


def kvstore(path) -> dict:
    """Tensorstore's kvstore spec of a directory: `file` locally, `gcs` for gs://."""
    if not is_url(path):
        return {"driver": "file", "path": os.path.abspath(os.fspath(path))}
    bucket, _, key = os.fspath(path).split("://", 1)[1].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": key.rstrip("/") + "/" if key else ""}


def _filesystem(url: str):
    import fsspec  # epath's own gs:// backend: one request per directory tree, not one per file

    return fsspec.core.url_to_fs(url)


def file_sizes(path) -> dict[str, int]:
    """{path relative to `path`: size in bytes} of every file under a local or gs:// directory (one
    listing request on GCS, not one per file)."""
    fs, root = _filesystem(os.fspath(as_path(path)))
    root = root.rstrip("/")
    found = fs.find(root, detail=True).items()
    return {name[len(root) + 1 :]: int(info["size"]) for name, info in found if info["type"] == "file"}


def move(path, target) -> None:
    """Renames a file or directory tree (on GCS: copies then deletes, object by object)."""
    if not is_url(path):
        os.rename(as_path(path), as_path(target))
        return
    fs, remote = _filesystem(os.fspath(path))
    fs.mv(remote.rstrip("/"), _filesystem(os.fspath(target))[1].rstrip("/"), recursive=True)
    for client in type(fs)._cache.values():  # every client's listings of the old name are stale (orbax
        client.invalidate_cache()  # and etils.epath hold clients of their own)


def read_range(path, start: int, end: int) -> bytes:
    """Bytes [start, end) of a gs:// object: one ranged request, no open handle or read-ahead left."""
    fs, remote = _filesystem(os.fspath(path))
    return fs.cat_file(remote, start=start, end=end)


def local_copy(path, what: str) -> str:
    """A local directory with the contents of `path`: itself when local, else a copy on this host's disk
    (a new temporary directory per process, removed at exit) for readers that only open local files."""
    if not is_url(path):
        return os.path.abspath(os.fspath(path))
    if not isdir(path):
        raise UsageError(f"{what}={path}: no such directory in the bucket")
    local = tempfile.mkdtemp(prefix="grit_jax_copy_")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    fs, remote = _filesystem(os.fspath(path))
    fs.get(remote.rstrip("/") + "/", local + "/", recursive=True)
    return local


def upload_dir(local: str, path) -> None:
    """Copies a local directory tree to `path` (a gs:// URL), file by file, replacing what is there;
    orbax's `_METADATA` files go last: an item without one is not read as a checkpoint."""
    fs, remote = _filesystem(os.fspath(path))
    files = [os.path.relpath(os.path.join(r, n), local) for r, _, names in os.walk(local) for n in names]
    for relative in sorted(files, key=lambda f: os.path.basename(f) == "_METADATA"):  # its marker last
        fs.put_file(os.path.join(local, relative), f"{remote.rstrip('/')}/{relative}")
