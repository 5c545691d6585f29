"""A scripted Gemini generateContent endpoint on 127.0.0.1, reached through the real google-genai SDK
with its base URL overridden: the judge's tests and the reduced workflow's judge need no internet."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Gemini:
    """A scripted generateContent endpoint: each request pops the next behaviour."""

    def __init__(self):
        self.script = []
        self.calls = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                owner.calls.append({"path": self.path, "t": time.monotonic(), "body": body,
                                    "key": self.headers.get("x-goog-api-key")})
                action = owner.script.pop(0) if owner.script else ("ok", None)
                kind, arg = action
                if kind == "stall":
                    time.sleep(arg)
                    return
                if kind == "status":
                    code, retry_after, message = arg
                    self.send_response(code)
                    if retry_after is not None:
                        self.send_header("Retry-After", str(retry_after))
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"code": code, "message": message, "status": "X"}}).encode())
                    return
                if kind == "ok":
                    prompt = body["contents"][0]["parts"][0]["text"]
                    n_items = 0   # items are numbered "1. …", "2. …" (an item's own newlines do not count)
                    for line in prompt.splitlines():
                        if line.startswith(f"{n_items + 1}. "):
                            n_items += 1
                    text = json.dumps({"scores": [0.9] * n_items})
                else:   # "text": a literal answer
                    text = arg
                resp = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}]}
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(resp).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
