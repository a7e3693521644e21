#!/usr/bin/env python3
"""The demo site: `app.py PORT`. Standard library only, plus the `demo_greeting` package
installed by dp-deps into the release's .venv.

GET /        a page with the release, the greeting, and a visit counter kept in SQLite
GET /healthz 200 "ok RELEASE" when the database answers (the release serving it)
The database file comes from $DEMO_DB.
"""
import http.server
import os
import sqlite3
import sys

import demo_greeting

HERE = os.path.dirname(os.path.realpath(__file__))
RELEASE = os.path.basename(HERE)
DB = os.environ.get("DEMO_DB", os.path.join(HERE, "demo.sqlite3"))


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body, kind="text/html; charset=utf-8"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        try:
            with sqlite3.connect(DB, timeout=5) as db:
                if self.path == "/healthz":
                    db.execute("SELECT count(*) FROM visits").fetchone()
                    return self.reply(200, "ok %s\n" % RELEASE, "text/plain")
                db.execute("INSERT INTO visits (path) VALUES (?)", (self.path,))
                count = db.execute("SELECT count(*) FROM visits").fetchone()[0]
                greeting = db.execute("SELECT text FROM greetings ORDER BY id DESC LIMIT 1").fetchone()
        except sqlite3.Error as e:
            return self.reply(500, f"database error: {e}\n", "text/plain")
        text = greeting[0] if greeting else "hello"
        self.reply(
            200,
            f"<h1>{text}, from release {RELEASE}</h1>\n"
            f"<p>{demo_greeting.VERSION and 'demo_greeting ' + demo_greeting.VERSION}"
            f" &middot; visits: {count}</p>\n",
        )

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer.allow_reuse_address = True
try:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
except OSError as e:
    # Another process holds the port (the demo of another checkout, say): say so and
    # stop, so the restart command fails instead of that process answering for us.
    sys.exit(f"demo: cannot listen on port {sys.argv[1]}: {e.strerror} (another process holds it?)")
print(f"listening on port {sys.argv[1]}, release {RELEASE}", flush=True)
server.serve_forever()
