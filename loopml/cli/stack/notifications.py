"""Where Prefect's notifications go: a local HTTP sink and the webhook block pointing at it."""

from __future__ import annotations

import hmac
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loopml.cli.stack.processes import HOST

NOTIFICATION_BLOCK = "loopml-notifications"


class NotificationSink:
    """A local HTTP receiver for Prefect notification blocks: one JSON line per notification.

    Prefect's server POSTs ``{"subject", "body"}`` (a Custom Webhook block) here; the line gets
    the time it arrived. Works offline and needs nothing but the standard library. With a
    ``token``, a POST without ``Authorization: Bearer TOKEN`` is refused (401): a forged
    notification from another local process or a web page is not written.
    """

    def __init__(
        self, path: Path, host: str = HOST, port: int = 0, token: str | None = None
    ) -> None:
        self.path = path
        self.token = token
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                if sink.token is not None and not hmac.compare_digest(
                    self.headers.get("Authorization") or "", f"Bearer {sink.token}"
                ):
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    message = json.loads(raw or b"{}")
                except ValueError:
                    message = {"body": raw.decode(errors="replace")}
                if not isinstance(message, dict):
                    message = {"body": message}
                sink.append(message)
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                payload = json.dumps({"status": "ok", "file": str(sink.path)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the JSON lines are the log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="loopml-notifications", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/notify"

    def append(self, message: dict[str, Any]) -> None:
        record = {"received_at": datetime.now(UTC).isoformat(), **message}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str) + "\n")

    def start(self) -> NotificationSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def existing_notification_block() -> str | None:
    """The id of the ``loopml-notifications`` block, if one was saved before."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(
                NOTIFICATION_BLOCK, block_type_slug="custom-webhook"
            )
        except ObjectNotFound:
            return None
    return str(document.id)


def save_notification_block(url: str, token: str | None = None) -> str:
    """The Custom Webhook block the notification automations send to; returns its id.

    ``token`` is kept in the block's secrets (a SecretDict: masked in the Prefect UI
    and API) and sent as a bearer token.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="loopml",
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        headers={"Authorization": "Bearer {{sink_token}}"} if token else None,
        secrets={"sink_token": token} if token else {},
        timeout=5,
    )
    return str(block.save(NOTIFICATION_BLOCK, overwrite=True))
