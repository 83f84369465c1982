"""A log receiver for Alertmanager webhooks: one line per alert on stdout.

Standard library only, so it runs in a bare ``python`` image (the ``alert-log``
service of docker-compose.yml) or anywhere with ``python3 deploy/alert_log.py``.
Point a webhook receiver of alertmanager.yml at ``http://HOST:9095/alerts``.

Each line is ``<received at> <STATUS> <alertname> {labels} <summary>``, e.g.::

    2026-11-25T07:31:02Z FIRING ProdlensDeadLettersHigh {severity="warning", topic="prodlens.predictions"} prodlens.predictions: 5% of events dead-lettered

With ``--json`` each line is the alert as JSON instead (for a log shipper).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def format_alert(alert: dict, received: float) -> str:
    """One log line for one alert of a webhook payload."""
    labels = dict(alert.get("labels") or {})
    name = labels.pop("alertname", "?")
    shown = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    annotations = alert.get("annotations") or {}
    text = annotations.get("summary") or annotations.get("description") or ""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(received))
    return f"{stamp} {str(alert.get('status', '?')).upper()} {name} {{{shown}}} {text}".rstrip()


def alerts_of(body: bytes) -> list[dict]:
    """The alerts of an Alertmanager webhook payload (version 4); ValueError names what is wrong."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("payload has no 'alerts' list (is this an Alertmanager webhook?)")
    return [a for a in payload["alerts"] if isinstance(a, dict)]


class Handler(BaseHTTPRequestHandler):
    as_json = False

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            alerts = alerts_of(body)
        except ValueError as exc:
            self._reply(400, f"{exc}\n")
            return
        now = time.time()
        for alert in alerts:
            line = json.dumps(alert, sort_keys=True) if self.as_json else format_alert(alert, now)
            print(line, flush=True)
        self._reply(200, "ok\n")

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200, "alert-log: POST Alertmanager webhooks to /alerts\n")

    def _reply(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # requests are not alerts: keep stdout clean
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--json", action="store_true", help="print each alert as JSON")
    args = parser.parse_args(argv)
    Handler.as_json = args.json
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `docker stop` ends it at once
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"alert-log listening on http://{args.host}:{server.server_port}/alerts", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
