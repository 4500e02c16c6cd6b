"""A local HTTP server for tests that download (CI has no internet): stdlib ``http.server`` in a
thread, serving bytes registered per URL path, counting requests, and able to misbehave.

    with FileServer() as server:
        server.add("/pretrain/x-1234abcd.pth", data)              # 200 with the bytes
        server.add("/slow.pth", data, delay=1.0)                   # answers after 1 s
        server.add("/cut.pth", data, truncate=100)                 # announces len(data), sends 100
        url = server.url + "/pretrain/x-1234abcd.pth"              # any other path: 404
        server.requests["/pretrain/x-1234abcd.pth"]                # GETs seen so far

``refused_url()`` is a URL on a port nobody listens on. The fixtures ``cache`` (an empty
FVCORE_CACHE with fresh download handlers) and ``server`` (a FileServer standing in for
download.openmmlab.com through D2SEG_MIRROR) serve the download tests.
"""
import collections
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

__all__ = ["FileServer", "refused_url", "cache", "server"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from d2seg.checkpoint.handlers import register_handlers

    root = tmp_path / "cache"
    monkeypatch.setenv("FVCORE_CACHE", str(root))
    register_handlers()  # fresh handlers: nothing remembered from other tests
    yield str(root)
    register_handlers()


@pytest.fixture
def server(monkeypatch):
    with FileServer() as s:
        monkeypatch.setenv("D2SEG_MIRROR", s.url)
        yield s


class FileServer:
    def __init__(self):
        self.files = {}
        self.requests = collections.Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests[path] += 1
                    entry = server.files.get(path)
                if entry is None:
                    self.send_error(404, "not found")
                    return
                data, delay, truncate = entry
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if truncate is None else data[:truncate])
                self.wfile.flush()
                if truncate is not None:
                    self.close_connection = True

            def log_message(self, *args):  # quiet test output
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def add(self, path: str, data: bytes, delay: float = 0.0, truncate=None) -> str:
        """Serves ``data`` at ``path``; returns its full URL."""
        with self._lock:
            self.files[path] = (bytes(data), delay, truncate)
        return self.url + path

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def refused_url(path: str = "/x.pth") -> str:
    """A URL whose port was just free: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
