"""Anthropic Messages API through the official ``anthropic`` SDK (streamed, as long outputs require)."""

from __future__ import annotations

from autopack.llm.base import LLMRequest, LLMResponse, is_truncated, normalise_finish_reason
from autopack.llm.sdk import SDKProvider, sdk_error_message, usage_int


class AnthropicProvider(SDKProvider):
    name = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    default_model = "claude-sonnet-4-5"

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        import anthropic

        self._anthropic = anthropic
        self._client = anthropic.Anthropic(
            api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0
        )

    def _call(self, request: LLMRequest) -> LLMResponse:
        model = request.model or self.model
        with self._client.messages.stream(
            model=model,
            max_tokens=request.max_tokens,
            system=request.system,
            messages=[{"role": "user", "content": request.prompt}],
        ) as stream:
            message = stream.get_final_message()
        text = "".join(getattr(block, "text", "") for block in message.content if block.type == "text")
        usage = message.usage
        output = usage_int(usage, "output_tokens")
        base_input = usage_int(usage, "input_tokens")
        cache_read = usage_int(usage, "cache_read_input_tokens")
        cache_write = usage_int(usage, "cache_creation_input_tokens")
        # The whole prompt: Anthropic's input_tokens excludes cache reads and writes.
        prompt = None if base_input is None else base_input + (cache_read or 0) + (cache_write or 0)
        stop = message.stop_reason
        return LLMResponse(
            text=text,
            provider=self.name,
            model=message.model or model,
            max_tokens=request.max_tokens,
            input_tokens=prompt,
            output_tokens=output,
            total_tokens=None if prompt is None or output is None else prompt + output,
            cached_tokens=cache_read,
            reasoning_tokens=None,
            stop_reason=stop,
            finish_reason=normalise_finish_reason(stop),
            truncated=is_truncated(stop, output, request.max_tokens),
        )

    def _status_of(self, exc: BaseException) -> tuple[int, str, str | None] | None:
        if isinstance(exc, self._anthropic.APIStatusError):
            headers = getattr(exc.response, "headers", {}) or {}
            return exc.status_code, sdk_error_message(exc), headers.get("retry-after")
        return None

    def _is_network(self, exc: BaseException) -> bool:
        return isinstance(exc, self._anthropic.APIConnectionError)  # includes APITimeoutError
