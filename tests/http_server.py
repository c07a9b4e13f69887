"""A real threaded HTTP server on 127.0.0.1 for tests, with faults one can program.

    with serve() as server:
        server.add("/a.zip", data, faults=[Fault(status=500), Fault(truncate_to=10)])
        download(server.url("/a.zip"), ...)
        assert server.count("/a.zip") == 3

Each GET of a path consumes that path's next `Fault` (HEAD requests consume none); once the
faults are used up the file is served normally, honouring `Range: bytes=N-[M]` with 206.
The server records every request (method, path, headers) and the largest number of requests
it was handling at once (`max_in_flight`), so tests can check resumes and concurrency limits.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    """What goes wrong with one GET. Fields combine: a delay, then the status or short body."""

    status: int | None = None  # answer with this status (and a tiny body) instead of the file
    delay: float = 0.0  # seconds to wait before answering: makes a client time out
    truncate_to: int | None = None  # send this many body bytes, though Content-Length promises all
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    body: bytes | None = None  # serve these bytes instead of the file (a corrupted copy)
    headers: dict[str, str] = field(default_factory=dict)  # extra headers, e.g. Retry-After


@dataclass
class Resource:
    body: bytes
    content_type: str = "application/octet-stream"
    last_modified: float | None = None  # epoch seconds, sent as Last-Modified
    faults: deque[Fault] = field(default_factory=deque)
    latency: float = 0.0  # every request to it waits this long (to overlap concurrent requests)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a short read is a closed socket

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        owner._enter(RecordedRequest(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        try:
            resource = owner.resources.get(path)
            if resource is None:
                self._reply(404, b"not found", "text/plain", head=head)
                return
            fault = owner._next_fault(resource) if not head else None
            wait = resource.latency + (fault.delay if fault else 0.0)
            if wait and owner.stopping.wait(wait):
                return  # the server is shutting down
            if fault and fault.status is not None:
                self._reply(fault.status, b"fault", "text/plain", head=head, extra=fault.headers)
                return
            self._serve(resource, fault, head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout): nothing left to tell it
        finally:
            owner._leave()

    def _serve(self, resource: Resource, fault: Fault | None, head: bool) -> None:
        body = fault.body if fault and fault.body is not None else resource.body
        extra = dict(fault.headers) if fault else {}
        extra["Accept-Ranges"] = "bytes"
        if resource.last_modified is not None:
            extra["Last-Modified"] = formatdate(resource.last_modified, usegmt=True)
        status, start, end = 200, 0, len(body)
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and not (fault and fault.ignore_range):
            first, _, last = wanted[len("bytes=") :].partition("-")
            start = int(first)
            if start >= len(body):
                extra["Content-Range"] = f"bytes */{len(body)}"
                self._reply(416, b"", "text/plain", head=head, extra=extra)
                return
            end = min(int(last) + 1, len(body)) if last else len(body)
            status = 206
            extra["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        payload = body[start:end]
        sent = payload if fault is None or fault.truncate_to is None else payload[: fault.truncate_to]
        self._reply(status, sent, resource.content_type, head=head, extra=extra, length=len(payload))

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        extra: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler stuck in a delay must not hold up the test
    owner: TestServer


class TestServer:
    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(
        self,
        path: str,
        body: bytes | str,
        *,
        content_type: str = "application/octet-stream",
        faults: list[Fault] | None = None,
        last_modified: float | None = None,
        latency: float = 0.0,
    ) -> str:
        """Serve `body` at `path`; returns its full URL."""
        data = body.encode() if isinstance(body, str) else body
        self.resources[path] = Resource(data, content_type, last_modified, deque(faults or []), latency)
        return self.url(path)

    def add_faults(self, path: str, *faults: Fault) -> None:
        with self._lock:
            self.resources[path].faults.extend(faults)

    def count(self, path: str, method: str = "GET") -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path == path and r.method == method)

    def requests_for(self, path: str, method: str = "GET") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def start(self) -> TestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_fault(self, resource: Resource) -> Fault | None:
        with self._lock:
            return resource.faults.popleft() if resource.faults else None

    def _enter(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


@contextmanager
def serve() -> Iterator[TestServer]:
    server = TestServer().start()
    try:
        yield server
    finally:
        server.stop()
