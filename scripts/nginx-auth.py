#!/usr/bin/env python3
"""A minimal auth_http service for nginx's mail proxy, for
scripts/compare-peers.sh: it answers every known user with the backend
listed for it, and leaves the password check to the backend (as Portico's
Redis routes do).

    python3 scripts/nginx-auth.py PORT ROUTES

ROUTES has one "user host:port" line per user; the host must be an IP
address (nginx does not resolve Auth-Server). Listens on 127.0.0.1 only.
"""

import http.server
import sys
import urllib.parse


def load_routes(path):
    routes = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                user, addr = line.split()
                host, port = addr.rsplit(":", 1)
                routes[user] = (host, port)
    return routes


class Handler(http.server.BaseHTTPRequestHandler):
    routes = {}

    def do_GET(self):
        # nginx URL-encodes Auth-User (since 1.5.6).
        user = urllib.parse.unquote(self.headers.get("Auth-User", ""))
        route = self.routes.get(user)
        self.send_response(200)
        if route:
            self.send_header("Auth-Status", "OK")
            self.send_header("Auth-Server", route[0])
            self.send_header("Auth-Port", route[1])
        else:
            # The text is what the client sees; Auth-Wait lets it retry.
            self.send_header("Auth-Status", "Invalid login or password")
            self.send_header("Auth-Wait", "2")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass  # one line per login would cost more than the answer


def main():
    port, routes = int(sys.argv[1]), sys.argv[2]
    Handler.routes = load_routes(routes)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    srv.serve_forever()


if __name__ == "__main__":
    main()
