"""An HTTP proxy in front of a local S3-compatible server: it counts requests, and can add a
fixed latency to each and cap the bandwidth of all responses together.

The tests count the requests an epoch makes to the store through it; bench/bench_remote.py uses
it to play a distant object store. It lives beside the other test helpers (tests/ is on the
test path already; the bench adds it to sys.path), so there is one copy of it.

Point s3fs at it by giving its URL as the ``endpoint_url``: requests are forwarded unchanged
(Host header included, so signatures still match) to ``upstream``. Bodies of requests must
carry a Content-Length (uploads with chunked encoding are not supported; write through the
upstream server directly).
"""

from __future__ import annotations

import collections
import http.client
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
_SEND_CHUNK = 64 << 10


class StoreProxy:
    """``with StoreProxy(upstream, latency_s=0.05, bytes_per_s=100e6) as proxy: proxy.url``;
    ``requests`` counts (method, path) pairs."""

    def __init__(
        self, upstream: str, latency_s: float = 0.0, bytes_per_s: float | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bytes_sent = 0
        self._lock = threading.Lock()
        self._link_free_at = 0.0  # when the shared, capped link has sent what it was given
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str | None = None, path_ends: str = "") -> int:
        """Requests so far (of ``method``, to a path ending in ``path_ends``)."""
        with self._lock:
            return sum(
                n
                for (m, path), n in self.requests.items()
                if method in (None, m) and urllib.parse.urlsplit(path).path.endswith(path_ends)
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent = 0

    def __enter__(self) -> StoreProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _count(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[method, path] += 1

    def _send_time(self, size: int) -> float:
        """When a chunk of ``size`` bytes has crossed the capped link (shared by all)."""
        with self._lock:
            self.bytes_sent += size
            if not self.bytes_per_s:
                return 0.0
            start = max(time.monotonic(), self._link_free_at)
            self._link_free_at = start + size / self.bytes_per_s
            return self._link_free_at


def _handler_for(proxy: StoreProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as s3fs's connection pool expects

        def log_message(self, format, *args) -> None:  # noqa: A002 - quiet
            pass

        def _forward(self) -> None:
            proxy._count(self.command, self.path)
            if proxy.latency_s:
                time.sleep(proxy.latency_s)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                declared = response.getheader("Content-Length")
                if self.command == "HEAD" and declared is not None:
                    self.send_header("Content-Length", declared)
                else:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self._send_capped(payload)
            finally:
                upstream.close()

        def _send_capped(self, payload: bytes) -> None:
            for start in range(0, len(payload), _SEND_CHUNK):
                chunk = payload[start : start + _SEND_CHUNK]
                done_at = proxy._send_time(len(chunk))
                delay = done_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                self.wfile.write(chunk)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler
