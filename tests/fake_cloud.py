"""What both cloud fakes offer a test: one control interface, keyed by the backend's instance id, and the small
HTTP pieces their metadata servers share."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

HTTP_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
                412: "Precondition Failed", 429: "Too Many Requests", 500: "Internal Server Error",
                503: "Service Unavailable"}


class FakeCloud(Protocol):
    """The control layer of an offline cloud (``FakeAws``, ``FakeGcp``). Ids are the backend's
    ``InstanceFacts.instance_id`` (EC2: ``i-…``; GCE: ``<zone>/<name>``); codes are the cloud's own."""

    name: str  # "aws" | "gcp"

    def preempt(self, instance_id: str, notice_seconds: float | None = 2.0) -> None:
        """The cloud reclaims a spot VM: notice now, killed after ``notice_seconds``; None: at once, no notice."""

    def rebalance(self, instance_id: str) -> None:
        """An early warning that is not an interruption notice."""

    def lose(self, instance_id: str) -> None:
        """Infrastructure loss: killed at once, no notice, no preemption fact."""

    def fail_launch(self, code: str, instance_type: str | None = None, zone: str | None = None,
                    times: int | None = None) -> None:
        """Matching launch calls fail with ``code`` (``times=None``: until :meth:`clear_failures`)."""

    def throttle(self, times: int = 1) -> None:
        """The next ``times`` launch calls are refused as throttled."""

    def clear_failures(self) -> None: ...

    def hold_termination(self, instance_id: str) -> None:
        """Terminating this VM stops half-way (VM killed, disks attached) until :meth:`finish_termination`."""

    def finish_termination(self, instance_id: str) -> None: ...

    def wait_gone(self, instance_id: str, timeout: float = 60.0) -> str:
        """Wait until the VM is stopped or gone and its processes are dead; returns the cloud's final state."""

    def vm_dir(self, instance_id: str) -> Path: ...

    def data_dir(self, instance_id: str) -> Path:
        """The data disk as the VM sees it (``checkpoints/`` inside)."""

    def console(self, instance_id: str) -> str: ...

    def tracked(self, instance_id: str) -> set[int]:
        """Pids of the VM's processes the runner has seen."""

    def processes_alive(self) -> list[int]:
        """Pids of live processes of any VM of this cloud."""


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that answers with :meth:`send` and keeps test output clean."""

    def send(self, status: int, body: bytes, content_type: str = "text/plain",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTP_REASONS.get(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Tests read the fakes' counters, not an access log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # long-polls are woken on close; never wait for a handler that is mid-request


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``handler`` until :meth:`stop`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=name,
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
