"""Talking HTTP to an SGLang-style server: one `httpx.Client`, the API key, and errors in words.

Owns `HttpClient` (GET/POST JSON and streamed POSTs against a base URL, `Authorization:
Bearer` when a key is given, no read timeout by default: a request may wait in the server's
queue; httpx is imported with the first client, so `import lmnb` stays light) and how a failed
answer becomes a Python exception: a 400 is a ValueError (a TypeError when the message is about
a type) with the server's own message, a 401/403 a PermissionError that names the API key, a
404 a NotImplementedError naming the route, anything else a RuntimeError; a server that cannot
be reached is a ConnectionError. Knows nothing of prompts, sampling parameters or the language.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

# 400 messages that complain about a value's type (the runtime raises TypeError for these)
_TYPE_WORDS = re.compile(r"must be (a|an) (string|integer|number|object|list|array|dict|bool)"
                         r"|must be true or false|must hold strings|got an unexpected|unknown "
                         r"(sampling )?(parameter|argument)", re.IGNORECASE)


class HttpClient:
    """JSON over HTTP to `base_url`; thread-safe (httpx's pool is)."""

    def __init__(self, base_url: str, api_key: str | None = None, verify: Any = None,
                 timeout: float | None = None, connect_timeout: float = 10.0) -> None:
        import httpx

        self.errors = httpx.HTTPError  # what a failed connection or a broken stream raises
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=self.base_url, headers=headers,
            verify=True if verify is None else verify,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    def get(self, path: str, **params: Any) -> Any:
        return self._json(self._send("GET", path, params=params or None))

    def post(self, path: str, body: Any) -> Any:
        return self._json(self._send("POST", path, json=body))

    def post_ok(self, path: str, body: Any) -> bool:
        """POST and say whether the server answered 2xx (no error raised for a 4xx/5xx)."""
        try:
            return self.client.post(path, json=body).is_success
        except self.errors:
            return False

    def open_stream(self, path: str, body: Any) -> httpx.Response:
        """POST and return the response once its headers are in (the body is read by the
        caller, then closed); a failed status raises here with the server's message."""
        try:
            response = self.client.send(self.client.build_request("POST", path, json=body),
                                        stream=True)
        except self.errors as exc:
            raise self._unreachable(exc) from None
        if not response.is_success:
            try:
                response.read()
            finally:
                response.close()
            raise self.error_for(response)
        return response

    def close(self) -> None:
        self.client.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except self.errors as exc:
            raise self._unreachable(exc) from None
        if not response.is_success:
            raise self.error_for(response)
        return response

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return response.text

    def _unreachable(self, exc: Exception) -> ConnectionError:
        return ConnectionError(f"cannot reach the server at {self.base_url}: {exc}")

    def error_for(self, response: httpx.Response) -> Exception:
        """The exception a failed answer stands for, with the server's message."""
        status, path = response.status_code, response.request.url.path
        message = error_message(response.text)
        where = f"{self.base_url}{path}"
        if status in (401, 403):
            hint = ("the api_key given was not accepted" if self.api_key else
                    "the server needs an API key: RuntimeEndpoint(url, api_key=...) or "
                    "%lmnb connect URL --api-key KEY")
            return PermissionError(f"{where} refused the request ({status}: {message}); {hint}")
        if status in (400, 422):
            return (TypeError if _TYPE_WORDS.search(message) else ValueError)(message)
        if status == 404:
            return NotImplementedError(f"{where}: the server has no such route ({message})")
        return RuntimeError(f"{where} failed ({status}): {message}")


def error_message(raw: str) -> str:
    """The message of an error body: SGLang's and OpenAI's `{"error": {"message"}}`,
    FastAPI's `{"detail"}`, `{"message"}`, or the text itself."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.strip() or "(no message)"
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            for key in ("message", "detail"):
                if error.get(key):
                    return str(error[key])
        elif error:
            return str(error)
    return raw.strip()
