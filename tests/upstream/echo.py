"""A small real HTTP/1.1 upstream for the end-to-end tests (Python's standard library only).

Every answer describes the request it received (method, raw path, headers, body), so a test can
check exactly what the gateway forwarded. A few paths serve fixed content for masking tests:
  /api/v1/users       an Okta-style users list with emails, phones and a card number
  /echo/where         a redirect whose Location and reason phrase name an email
  /echo/created       201 without a body, with an ETag
  /echo/validated     the users list with its ETag and Repr-Digest (HEAD: the same headers, no
                      body); with `not-modified` in the query, 304 with those validators
  /text               text/plain with an email in it
  /export?type=T&enc=E  a CSV export with a mobilePhone column and an email, served as type T
                      (URL-decoded) in encoding E (default utf-8)
  /binary             application/octet-stream
  /big?bytes=N        a JSON document of about N bytes
  /reflect            the Authorization header it received (or the header `X-Reflect-Header`
                      names), in a header and the body; with `encoded` in the query, also
                      spelled in escapes (every byte `%XX`, `&#N;` and `\\uXXXX`, and
                      percent-encoded twice)
  /gzip-reflect       the same body, gzip-compressed whatever the client accepts (some do)
  /te-gzip-reflect    the same, compressed as a transfer coding (`Transfer-Encoding: gzip, chunked`)
  /lying-length       the users list chunked, with a `Content-Length: 0` beside it
  /partial           206 Partial Content: a slice of the users list, whatever was asked
  /cut-short          the users list's Content-Length, half its bytes, then the connection closed
  /moved              301 to a user by this server's absolute URL (`Location`), with a
                      `Content-Location` by path, as upstreams name their own resources
  /events             server-sent events, chunked: one with an email, 2 s later a second (with a
                      card number), a JSON one (with a mobilePhone) and a pretty-printed JSON one
                      over three data lines, then the end
Any path with `delay_ms=N` in its query is held N ms before the answer, after logging
`HELD <path>`, so a test can look at the gateway while a request is upstream. A request whose
body is cut off is not answered and logs `CUT <path>`.
Listens on 127.0.0.1:$PORT; stops on SIGTERM.
"""

import gzip
import hashlib
import json
import os
import signal
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USERS = [
    {
        "id": "00u1alice",
        "status": "ACTIVE",
        "profile": {
            "login": "alice@example.com",
            "email": "alice@example.com",
            "mobilePhone": "+1 415 555 0100",
            "note": "card 4111 1111 1111 1111 on file",
        },
    },
    {
        "id": "00u2bob",
        "status": "ACTIVE",
        "profile": {"login": "bob", "email": "bob@example.org", "mobilePhone": "+44 20 7946 0958"},
    },
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.command, self.path))

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            return data
        data = self.rfile.read(length) if length else b""
        if len(data) < length:
            # The body was cut off: like a real server, answer nothing and run no handler.
            sys.stderr.write("CUT %s\n" % self.path)
            sys.stderr.flush()
            self.close_connection = True
            return None
        return data

    def _send(self, status, content_type, payload):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "echo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _handle(self):
        body = self._body()
        if body is None:
            return
        path = self.path.split("?")[0]
        for part in self.path.split("?", 1)[1:]:
            for kv in part.split("&"):
                if kv.startswith("delay_ms="):
                    sys.stderr.write("HELD %s\n" % path)
                    sys.stderr.flush()
                    time.sleep(int(kv[9:]) / 1000)
        if path == "/api/v1/users" and self.command == "GET":
            payload = json.dumps(USERS).encode()
            # Validators of the unmasked body, as Express and digest-aware servers send them.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("ETag", 'W/"%x-%s"' % (len(payload), hashlib.sha1(payload).hexdigest()))
            self.send_header("Repr-Digest", "sha-256=:%s:" % hashlib.sha256(payload).hexdigest())
            if "limit=" in self.path:
                # Okta's pagination: its own absolute URLs, the next page's cursor in the query.
                here = "http://%s/api/v1/users" % self.headers.get("Host")
                self.send_header(
                    "Link", '<%s?limit=2>; rel="self", <%s?after=00u2&limit=2>; rel="next"' % (here, here)
                )
            self.end_headers()
            self.wfile.write(payload)
            return
        if path == "/echo/validated":
            # Validators whatever the request's conditions: a HEAD, and a 304 that an upstream
            # sends on conditions of its own (or ones the gateway did not know to remove).
            payload = json.dumps(USERS).encode()
            modified = "not-modified" not in self.path
            self.send_response(200 if modified else 304)
            self.send_header("ETag", 'W/"%x-%s"' % (len(payload), hashlib.sha1(payload).hexdigest()))
            self.send_header("Repr-Digest", "sha-256=:%s:" % hashlib.sha256(payload).hexdigest())
            if modified:
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if modified and self.command == "GET":
                self.wfile.write(payload)
            return
        if path == "/partial":
            # An upstream that serves ranges: a value cut out of its document.
            whole = json.dumps(USERS).encode()
            start = whole.index(b'"alice@example.com"')
            part = whole[start : start + 19]
            self.send_response(206)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, start + 18, len(whole)))
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            self.wfile.write(part)
            return
        if path == "/moved":
            self.send_response(301)
            self.send_header("Location", "http://%s/api/v1/users/00u1" % self.headers.get("Host"))
            self.send_header("Content-Location", "/api/v1/users/00u1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/cut-short":
            # An upstream that breaks off its body: a JSON document promised whole, half sent.
            payload = json.dumps(USERS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/reflect":
            # A careless upstream that reflects the credential it was sent, in a header and body
            # (or, when the client names one, another header's value).
            raw = self.headers.get(self.headers.get("X-Reflect-Header", "Authorization"), "")
            payload = json.dumps({"you_sent": raw}).encode()
            if "encoded" in self.path.split("?", 1)[-1]:
                # Spelled as encoders that escape more than they must write it: every byte
                # percent-encoded, as an HTML numeric entity, as a JSON \u escape.
                payload = json.dumps(
                    {
                        "you_sent": raw,
                        "every_byte": "".join("%%%02X" % b for b in raw.encode()),
                        "html": "".join("&#%d;" % b for b in raw.encode()),
                        # Every byte percent-encoded, then encoded again as a URL inside
                        # another URL's query is.
                        "twice": urllib.parse.quote("".join("%%%02X" % b for b in raw.encode()), safe=""),
                    }
                ).encode()[:-1] + b', "json_u": "%s"}' % "".join("\\u%04x" % b for b in raw.encode()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Debug-Auth", raw)
            self.end_headers()
            self.wfile.write(payload)
            return
        if path == "/gzip-reflect":
            payload = gzip.compress(json.dumps({"you_sent": self.headers.get("Authorization", "")}).encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if path == "/te-gzip-reflect":
            # Compressed as a transfer coding, which hyper leaves on the body.
            payload = gzip.compress(json.dumps({"you_sent": self.headers.get("Authorization", "")}).encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "gzip, chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            return
        if path == "/lying-length":
            payload = json.dumps(USERS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            return
        if path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = [
                b"data: first, from dave@example.org\n\n",
                b'data: second, card 4111 1111 1111 1111\n\ndata: {"profile": {"mobilePhone": "+1 415 555 0199"}}\n\n'
                # Pretty-printed, split over data lines as SSE libraries split multi-line data.
                b'data: {\ndata:   "profile": {"mobilePhone": "+1 415 555 0177"}\ndata: }\n\n',
            ]
            gap = 2.0
            for part in self.path.split("?", 1)[1:]:
                for kv in part.split("&"):
                    if kv.startswith("gap_ms="):
                        gap = int(kv[7:]) / 1000
            for i, event in enumerate(events):
                if i:
                    time.sleep(gap)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/echo/created":
            # A write's answer without a body, with the validator clients need (S3's part ETag).
            self.send_response(201)
            self.send_header("ETag", '"part-1"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/echo/where":
            # The reason phrase names the user too, as `send_error(404, msg)` servers do.
            self.send_response(302, "Moved to carol@example.net")
            self.send_header("Location", "https://example.invalid/users/carol@example.net")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/export":
            from urllib.parse import parse_qs
            q = parse_qs(self.path.split("?", 1)[1] if "?" in self.path else "")
            csv = "id,mobilePhone,email\n1,+1 415 555 0100,erin@example.com\n"
            payload = csv.encode(q.get("enc", ["utf-8"])[0])
            return self._send(200, q.get("type", ["text/csv"])[0], payload)
        if path == "/text":
            return self._send(200, "text/plain; charset=utf-8", b"contact carol@example.net for access\n")
        if path == "/binary":
            return self._send(200, "application/octet-stream", b"\x00\x01alice@example.com")
        if path == "/big":
            size = 1024
            for part in self.path.split("?", 1)[1:]:
                for kv in part.split("&"):
                    if kv.startswith("bytes="):
                        size = int(kv[6:])
            filler = "x" * max(0, size - 40)
            return self._send(200, "application/json", json.dumps({"filler": filler}).encode())
        echo = {
            "method": self.command,
            "path": self.path,
            # Credentials are reported as hashes: an upstream that reflects them would hand the
            # gateway's injected secret straight back to the agent.
            "headers": [
                [k.lower(), "sha256:" + hashlib.sha256(v.encode()).hexdigest() if k.lower() == "authorization" else v]
                for k, v in self.headers.items()
            ],
            "body": body.decode("utf-8", "replace"),
        }
        self._send(200, "application/json", json.dumps(echo).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


def main():
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
