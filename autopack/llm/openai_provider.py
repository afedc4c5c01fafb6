"""OpenAI Chat Completions through the official ``openai`` SDK; ``base_url`` serves any compatible server.

``max_completion_tokens`` carries the ceiling (``max_tokens`` is deprecated and rejected by reasoning
models). ``output_tokens`` is ``completion_tokens``, which includes reasoning tokens: everything the
ceiling counts.
"""

from __future__ import annotations

from autopack.llm.base import LLMRequest, LLMResponse, is_truncated, normalise_finish_reason
from autopack.llm.sdk import SDKProvider, sdk_error_message, usage_int


class OpenAIProvider(SDKProvider):
    name = "openai"
    key_env = "OPENAI_API_KEY"
    default_model = "gpt-4.1-mini"

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        import openai

        self._openai = openai
        self._client = openai.OpenAI(api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def _call(self, request: LLMRequest) -> LLMResponse:
        model = request.model or self.model
        completion = self._client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}],
            max_completion_tokens=request.max_tokens,
        )
        choice = completion.choices[0] if completion.choices else None
        text = (choice.message.content or "") if choice is not None and choice.message is not None else ""
        stop = choice.finish_reason if choice is not None else None
        usage = completion.usage
        prompt = usage_int(usage, "prompt_tokens")
        output = usage_int(usage, "completion_tokens")
        total = usage_int(usage, "total_tokens")
        details = getattr(usage, "completion_tokens_details", None)
        prompt_details = getattr(usage, "prompt_tokens_details", None)
        return LLMResponse(
            text=text,
            provider=self.name,
            model=completion.model or model,
            max_tokens=request.max_tokens,
            input_tokens=prompt,
            output_tokens=output,
            total_tokens=total,
            reasoning_tokens=usage_int(details, "reasoning_tokens"),
            cached_tokens=usage_int(prompt_details, "cached_tokens"),
            stop_reason=stop,
            finish_reason=normalise_finish_reason(stop),
            truncated=is_truncated(stop, output, request.max_tokens),
        )

    def _status_of(self, exc: BaseException) -> tuple[int, str, str | None] | None:
        if isinstance(exc, self._openai.APIStatusError):
            headers = getattr(exc.response, "headers", {}) or {}
            return exc.status_code, sdk_error_message(exc), headers.get("retry-after")
        return None

    def _is_network(self, exc: BaseException) -> bool:
        return isinstance(exc, self._openai.APIConnectionError)  # includes APITimeoutError
