"""A tiny Kubernetes API server on 127.0.0.1 for testing the real client code path.

Routes map (METHOD, path) to (status, JSON body). Unknown routes answer 404
with a plain "404 page not found", like the real server for an unknown
resource (a missing CRD). Every request is recorded with its query string.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

NS = "embedopt"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
TFJOBS = f"/apis/kubeflow.org/v1/namespaces/{NS}/tfjobs"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
SERVICES = f"/api/v1/namespaces/{NS}/services"
PODS = f"/api/v1/namespaces/{NS}/pods"


def status_body(code: int, reason: str, message: str, kind: str = "", name: str = "") -> dict:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {"name": name, "kind": kind}, "code": code,
    }


class FakeApiServer:
    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, object]] = {}
        self.requests: list[tuple[str, str, dict, object]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.requests.append((self.command, url.path, parse_qs(url.query), json.loads(raw) if raw else None))
                code, body = server.routes.get((self.command, url.path), (404, None))
                payload = b"404 page not found\n" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if body is None else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_kubeconfig(path, server_url: str, context: str = "fake") -> str:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": context, "context": {"cluster": "fake", "user": "tester", "namespace": "embedopt"}}],
    }
    path.write_text(json.dumps(config))
    return str(path)
