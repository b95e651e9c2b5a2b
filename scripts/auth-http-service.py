#!/usr/bin/env python3
"""An auth_http service as nginx mail users write them (the shape of the
example in nginx's documentation), for the tests that run it under nginx
and under Portico and compare what it received.

    python3 scripts/auth-http-service.py PORT USERS RECORD [--http11]

USERS has one line per user, fields separated by tabs:

    login  password  host:port  [upstream-user  upstream-password]

The password is compared after URL-decoding Auth-Pass, as nginx (since
1.5.6) URL-encodes it. Special logins: "wait-*" never matches (wrong
password answered with Auth-Wait: 1), a wrong password for a known user
gets "Invalid login or password" with Auth-Wait: 1, an unknown user
"Invalid login or password" without Auth-Wait (nginx then closes the
connection), and "broken" a 500.

Each request is appended to RECORD as one JSON line: the request line,
the headers as received (names in their case, in their order), and a
number identifying the TCP connection, so that tests can count them.
--http11 answers HTTP/1.1 and keeps connections open, as a PHP service
behind a web server would; without it the answer is HTTP/1.0 and the
connection closes, which is all nginx needs. Listens on 127.0.0.1 only.
"""

import http.server
import itertools
import json
import sys
import threading
import urllib.parse

conn_ids = itertools.count(1)
lock = threading.Lock()


def load_users(path):
    users = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            users[fields[0]] = fields[1:]
    return users


class Handler(http.server.BaseHTTPRequestHandler):
    users = {}
    record = None

    def setup(self):
        super().setup()
        self.conn_id = next(conn_ids)

    def do_GET(self):
        # Header values arrive as latin-1 text; nginx sends UTF-8 bytes
        # (only controls, space and % are escaped), so go back to bytes.
        entry = {
            "request": self.requestline,
            "conn": self.conn_id,
            "headers": [[k, v.encode("latin-1").decode("utf-8", "backslashreplace")]
                        for k, v in self.headers.items()],
        }
        with lock, open(self.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

        def decoded(name):
            raw = self.headers.get(name, "").encode("latin-1")
            return urllib.parse.unquote_to_bytes(raw).decode("utf-8", "replace")

        login, password = decoded("Auth-User"), decoded("Auth-Pass")
        if login == "broken":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        user = self.users.get(login)
        self.send_response(200)
        if user and user[0] == password:
            host, port = user[1].rsplit(":", 1)
            self.send_header("Auth-Status", "OK")
            self.send_header("Auth-Server", host)
            self.send_header("Auth-Port", port)
            if len(user) >= 4:
                self.send_header("Auth-User", user[2])
                self.send_header("Auth-Pass", user[3])
        elif user:
            self.send_header("Auth-Status", "Invalid login or password")
            self.send_header("Auth-Wait", "1")
        else:
            self.send_header("Auth-Status", "Invalid login or password")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port, users, record = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    Handler.users = load_users(users)
    Handler.record = record
    if "--http11" in sys.argv[4:]:
        Handler.protocol_version = "HTTP/1.1"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    print("ready", srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
