"""A work directory belongs to one training run at a time: WORKDIR/run.lock, taken by process 0.

Two runs on one work dir would both append metrics, both save and delete checkpoints, and one of them
die on a file the other removed. The lock says who holds it (host, pid, start time) in one line.

Local: an flock on run.lock, which the operating system releases when the holder exits in any way,
so a crashed run never blocks the next one. gs://: GCS has no locks, but an object can be created only
if absent (ifGenerationMatch=0); the holder rewrites it every HEARTBEAT_SECONDS, and a lock not
rewritten for STALE_SECONDS is a crashed run's, and so is one whose holder ran on this host and is gone
(a run killed and resumed in place): it is deleted only in the generation that was read (so two runs
taking it over at once cannot both win) and created again.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from grit_jax import storage
from grit_jax.errors import UsageError

LOCK = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(holder: dict) -> str:
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')} (since {holder.get('started', '?')})"


class WorkdirLock:
    """Taken by `acquire` (UsageError naming the holder when another run has it), given back by `release`."""

    def __init__(self, workdir: str, stale_seconds: float = STALE_SECONDS, name=LOCK, flag="--workdir"):
        """name: the lock file; flag: how the directory is named in the refusal (grit-embed: --out)."""
        self.workdir, self.path, self.flag = workdir, storage.join(workdir, name), flag
        self.stale_seconds, self.me = stale_seconds, _holder()
        self.file, self.stop = None, threading.Event()

    def _refuse(self, holder: dict, extra: str = ""):
        raise UsageError(
            f"{self.flag} {self.workdir} is in use by another run: {_describe(holder)}{extra}; wait for it "
            f"to end or use another {self.flag}"
        )

    def acquire(self) -> None:
        if storage.is_url(self.path):
            self._acquire_gcs()
            return
        import fcntl

        file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = _parse(file.read())
            file.close()
            self._refuse(holder)
        file.seek(0)
        file.truncate()
        file.write(json.dumps(self.me))
        file.flush()
        self.file = file

    def _acquire_gcs(self) -> None:
        import fsspec

        fs, key = fsspec.core.url_to_fs(self.path)
        data = json.dumps(self.me).encode()
        try:
            fs.pipe_file(key, data, mode="create")
        except FileExistsError:
            fs.invalidate_cache()
            info = fs.info(key)
            age, holder = time.time() - _timestamp(info), _parse(fs.cat_file(key).decode())
            if age < self.stale_seconds and not _ended_here(holder):
                self._refuse(holder, f", last seen {age:.0f} s ago")
            bucket, name = key.split("/", 1)  # a crashed run's: delete exactly what was read, then take it
            try:
                fs.call("DELETE", "b/{}/o/{}", bucket, name, ifGenerationMatch=str(info["generation"]))
                fs.pipe_file(key, data, mode="create")
            except (FileExistsError, FileNotFoundError, OSError):
                fs.invalidate_cache()
                self._refuse(_parse(fs.cat_file(key).decode()), " (it took over the lock just now)")
        self.fs, self.key = fs, key
        threading.Thread(target=self._heartbeat, daemon=True, name="workdir_lock").start()

    def _heartbeat(self):
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.fs.pipe_file(self.key, json.dumps(self.me).encode())
            except OSError:
                pass  # the next beat tries again; a lock this old may be taken over, as documented

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock; the file stays (another run may hold it now)
            self.file = None
        elif getattr(self, "key", None):
            self.stop.set()
            try:
                self.fs.rm_file(self.key)
            except OSError:
                pass
            self.key = None


def _ended_here(holder: dict) -> bool:
    """The holder ran on this host and its process is gone (killed, preempted and restarted here): its lock
    can be taken at once instead of after STALE_SECONDS."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _parse(text: str) -> dict:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else {}
    except ValueError:
        return {}


def _timestamp(info: dict) -> float:
    """The object's last write, in seconds since the epoch (gcsfs gives an RFC 3339 string)."""
    from datetime import datetime

    updated = info.get("updated") or info.get("mtime")
    if isinstance(updated, str):
        return datetime.fromisoformat(updated.replace("Z", "+00:00")).timestamp()
    return updated.timestamp() if hasattr(updated, "timestamp") else time.time()
