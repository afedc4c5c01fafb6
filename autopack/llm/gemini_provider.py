"""Google Gemini through the official ``google-genai`` SDK (``http_options.base_url`` for local servers).

``output_tokens`` = candidates + thoughts tokens, since both count against ``max_output_tokens``;
``reasoning_tokens`` = thoughts. The raw stop reason is the FinishReason name (``STOP``, ``MAX_TOKENS``…).
"""

from __future__ import annotations

from autopack.llm.base import LLMRequest, LLMResponse, is_truncated, normalise_finish_reason
from autopack.llm.sdk import SDKProvider, usage_int


class GeminiProvider(SDKProvider):
    name = "gemini"
    key_env = "GEMINI_API_KEY"
    default_model = "gemini-2.5-flash"

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        from google import genai
        from google.genai import errors, types

        self._types = types
        self._errors = errors
        options = types.HttpOptions(
            base_url=self.base_url,
            timeout=int(self.timeout * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._client = genai.Client(api_key=self._api_key, http_options=options)

    def _call(self, request: LLMRequest) -> LLMResponse:
        model = request.model or self.model
        response = self._client.models.generate_content(
            model=model,
            contents=request.prompt,
            config=self._types.GenerateContentConfig(
                system_instruction=request.system,
                max_output_tokens=request.max_tokens,
                temperature=request.temperature,
            ),
        )
        candidate = response.candidates[0] if response.candidates else None
        parts = (candidate.content.parts or []) if candidate is not None and candidate.content is not None else []
        text = "".join(p.text or "" for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
        reason = getattr(candidate, "finish_reason", None) if candidate is not None else None
        stop = None if reason is None else str(getattr(reason, "value", reason))
        usage = response.usage_metadata
        prompt = usage_int(usage, "prompt_token_count")
        visible = usage_int(usage, "candidates_token_count")
        thoughts = usage_int(usage, "thoughts_token_count")
        output = None if visible is None and thoughts is None else (visible or 0) + (thoughts or 0)
        return LLMResponse(
            text=text,
            provider=self.name,
            model=getattr(response, "model_version", None) or model,
            max_tokens=request.max_tokens,
            input_tokens=prompt,
            output_tokens=output,
            total_tokens=usage_int(usage, "total_token_count"),
            reasoning_tokens=thoughts,
            cached_tokens=usage_int(usage, "cached_content_token_count"),
            stop_reason=stop,
            finish_reason=normalise_finish_reason(stop),
            truncated=is_truncated(stop, output, request.max_tokens),
        )

    def _status_of(self, exc: BaseException) -> tuple[int, str, str | None] | None:
        if isinstance(exc, self._errors.APIError):
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            message = f"{exc.status or ''} {exc.message or ''}".strip() or str(exc)
            return int(exc.code or 0) or 500, message, headers.get("retry-after") if hasattr(headers, "get") else None
        return None
