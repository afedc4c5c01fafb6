"""A tiny local LLM server for adapter tests: Anthropic, OpenAI and Gemini wire formats on 127.0.0.1.

Responses follow each provider's documented shapes. A test scripts what the next requests get by
appending modes to ``server.modes`` (default ``ok``):

  ok, truncated, total_only, 429 (rate limit, Retry-After: 0), 500, 401, 403, 400, 422, boundary
  (a 400 whose message says the prompt exceeds the context window).

``server.usage_overrides`` replaces usage numbers in the next successful OpenAI response (e.g.
``{"completion_tokens": 3_000_000_000}``), to test impossible provider-reported usage.

Every request is kept in ``server.requests`` (path, headers, JSON body) for assertions.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

TEXT = "=== FILE: pkg/a.py ===\nVALUE = 1\n=== END FILE ===\n"
INPUT_TOKENS = 21
OUTPUT_TOKENS = 17

_ERRORS = {
    "429": (429, "rate_limit_error", "Rate limit reached, retry later", "RESOURCE_EXHAUSTED"),
    "500": (500, "api_error", "Internal server error", "INTERNAL"),
    "401": (401, "authentication_error", "invalid x-api-key", "UNAUTHENTICATED"),
    "403": (403, "permission_error", "key lacks permission", "PERMISSION_DENIED"),
    "400": (400, "invalid_request_error", "messages: field required", "INVALID_ARGUMENT"),
    "422": (422, "invalid_request_error", "unprocessable request", "INVALID_ARGUMENT"),
    "boundary": (400, "invalid_request_error",
                 "prompt is too long: 250000 tokens > 200000 maximum (context_length_exceeded)", "INVALID_ARGUMENT"),
}


@dataclass
class FakeLLMServer:
    host: str = "127.0.0.1"
    port: int = 0
    modes: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    echo_key_in_errors: str | None = None
    usage_overrides: dict[str, Any] = field(default_factory=dict)

    def start(self) -> FakeLLMServer:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = make_server(self.host, 0, self._app, threaded=True)
        self.port = self._server.port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- WSGI --------------------------------------------------------------------------------------
    def _app(self, environ, start_response):  # type: ignore[no-untyped-def]
        request = Request(environ)
        body = request.get_json(silent=True) or {}
        self.requests.append({"path": request.path, "headers": dict(request.headers), "json": body})
        mode = self.modes.pop(0) if self.modes else "ok"
        if request.path.endswith("/messages"):
            response = self._anthropic(mode, body)
        elif request.path.endswith("/chat/completions"):
            response = self._openai(mode, body)
        elif ":generateContent" in request.path:
            response = self._gemini(mode, body)
        else:
            response = Response("not found", status=404)
        return response(environ, start_response)

    def _error_message(self, message: str) -> str:
        return f"{message} (key {self.echo_key_in_errors})" if self.echo_key_in_errors else message

    # -- Anthropic Messages (streamed SSE or plain JSON) ---------------------------------------------
    def _anthropic(self, mode: str, body: dict[str, Any]) -> Response:
        if mode in _ERRORS:
            status, kind, message, _ = _ERRORS[mode]
            payload = {"type": "error", "error": {"type": kind, "message": self._error_message(message)}}
            return Response(json.dumps(payload), status=status, content_type="application/json",
                            headers={"retry-after": "0"} if status == 429 else {})
        max_tokens = int(body.get("max_tokens", 1024))
        stop = "max_tokens" if mode == "truncated" else "end_turn"
        output = max_tokens if mode == "truncated" else OUTPUT_TOKENS
        text = TEXT[: len(TEXT) // 2] if mode == "truncated" else TEXT
        message = {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", "claude-fake"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 0, "cache_read_input_tokens": 4,
                      "cache_creation_input_tokens": 0},
        }
        if not body.get("stream"):
            message.update(content=[{"type": "text", "text": text}], stop_reason=stop)
            message["usage"]["output_tokens"] = output  # type: ignore[index]
            return Response(json.dumps(message), content_type="application/json")
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": text}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": output}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        sse = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
        return Response(sse, content_type="text/event-stream")

    # -- OpenAI Chat Completions ---------------------------------------------------------------------
    def _openai(self, mode: str, body: dict[str, Any]) -> Response:
        if mode in _ERRORS:
            status, kind, message, _ = _ERRORS[mode]
            code = "context_length_exceeded" if mode == "boundary" else None
            payload = {"error": {"message": self._error_message(message), "type": kind, "param": None, "code": code}}
            return Response(json.dumps(payload), status=status, content_type="application/json",
                            headers={"retry-after": "0"} if status == 429 else {})
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 1024)
        truncated = mode == "truncated"
        output = max_tokens if truncated else OUTPUT_TOKENS
        usage: dict[str, Any] | None = {
            "prompt_tokens": INPUT_TOKENS, "completion_tokens": output, "total_tokens": INPUT_TOKENS + output,
            "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2},
        }
        if mode == "total_only":
            usage = {"total_tokens": INPUT_TOKENS + OUTPUT_TOKENS}
        if usage is not None:
            usage.update(self.usage_overrides)
        payload = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body.get("model", "gpt-fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT[: len(TEXT) // 2] if truncated else TEXT},
                         "finish_reason": "length" if truncated else "stop", "logprobs": None}],
            "usage": usage,
        }
        return Response(json.dumps(payload), content_type="application/json")

    # -- Gemini generateContent ----------------------------------------------------------------------
    def _gemini(self, mode: str, body: dict[str, Any]) -> Response:
        if mode in _ERRORS:
            status, _, message, google_status = _ERRORS[mode]
            if mode == "boundary":
                message = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
            payload = {"error": {"code": status, "message": self._error_message(message), "status": google_status}}
            return Response(json.dumps(payload), status=status, content_type="application/json",
                            headers={"retry-after": "0"} if status == 429 else {})
        max_tokens = int((body.get("generationConfig") or {}).get("maxOutputTokens") or 1024)
        truncated = mode == "truncated"
        output = max_tokens if truncated else OUTPUT_TOKENS
        payload = {
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": TEXT[: len(TEXT) // 2] if truncated else TEXT}]},
                "finishReason": "MAX_TOKENS" if truncated else "STOP", "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": INPUT_TOKENS, "candidatesTokenCount": output,
                              "totalTokenCount": INPUT_TOKENS + output, "cachedContentTokenCount": 5},
            "modelVersion": "gemini-fake-001",
        }
        return Response(json.dumps(payload), content_type="application/json")
