"""uvicorn's HTTP/1.1 protocol (httptools), answering requests it cannot parse with the API's
JSON error instead of a plain-text line.

The parser refuses a request line plus headers past 64 KiB (a 1 MB query string, say) before
any route runs, so this is the only place that can give such a request a clear answer.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MESSAGE = (
    "the request could not be parsed: its line and headers must be valid HTTP/1.1 and together "
    "at most 64 KiB (send long values in a POST body)"
)
BODY = json.dumps(
    {
        "error": "invalid_argument",
        "message": MESSAGE,
        "field_violations": [{"field": "request", "description": MESSAGE}],
    }
).encode()


class HttpProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(BODY)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                BODY,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
