"""Google Cloud Storage for tests: the ``gcp-storage-emulator`` package as a subprocess on 127.0.0.1.

Importing this module turns off gcsfs's gRPC bucket probing (see GCSFS_PLAIN) unless gcsfs was imported first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# gcsfs >= 2026.x defaults to ExtendedGcsFileSystem, which asks the storage-control gRPC API for every bucket's
# layout; no emulator speaks gRPC, so each call hangs ~60 s. The flag is read when gcsfs is imported.
GCSFS_PLAIN = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
for _name, _value in GCSFS_PLAIN.items():
    os.environ.setdefault(_name, _value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The emulator with objects.move (`.../o/SRC/moveTo/o/DST`) added: gcsfs's mv() tries it first, and the emulator's
# 501 for it costs ~35 s of gcsfs retries per file before the copy/delete fallback.
_EMULATOR_MAIN = r"""
import sys
from gcp_storage_emulator import __main__ as cli, server, settings
from gcp_storage_emulator.handlers import objects


def move(request, response, storage, *args, **kwargs):
    params = request.params
    params["dest_bucket_name"] = params["bucket_name"]
    objects.copy(request, response, storage)
    if response.status == 200:
        objects._delete(storage, params["bucket_name"], params["object_id"])


MOVE = r"/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
server.HANDLERS = tuple((f"^{prefix}{MOVE}", {server.POST: move}) for prefix in (settings.API_ENDPOINT, "")) \
    + server.HANDLERS
cli.main(sys.argv[1:])
"""


class FakeGcs:
    """The `gcp-storage-emulator` package as a subprocess on 127.0.0.1; data kept under `data_dir`."""

    def __init__(self, data_dir: Path, project: str = "test-project", start_timeout: float = 20.0) -> None:
        self.data_dir, self.project = Path(data_dir), project
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        for _ in range(3):  # the free port can be taken between choosing and binding it
            if self._start(free_port(), start_timeout):
                return
        raise RuntimeError(f"gcp-storage-emulator did not start: {self.log()[-2000:]}")

    def _start(self, port: int, timeout: float) -> bool:
        with open(self.data_dir.parent / f"{self.data_dir.name}.emulator.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _EMULATOR_MAIN, "-d", str(self.data_dir), "start", "-H", "127.0.0.1",
                 "--port", str(port), "-q"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b?project={self.project}", timeout=1):
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.close()
        return False

    def log(self) -> str:
        path = self.data_dir.parent / f"{self.data_dir.name}.emulator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, **GCSFS_PLAIN}

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project={self.project}", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:  # already there is fine
                raise

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> FakeGcs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

