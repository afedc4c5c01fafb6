"""A provider wrapper that runs every call inside a caller-supplied gate (e.g. a concurrency slot).

Prefect's global concurrency limit for provider calls is applied this way, without the library knowing
about Prefect; it also remembers the last error so a caller can tell a transient failure from a final one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from autopack.llm.base import LLMProvider, LLMRequest, LLMResponse, ProviderError


@dataclass
class GatedProvider:
    inner: LLMProvider
    gate: Callable[[], AbstractContextManager[object]]
    last_error: ProviderError | None = field(default=None, init=False)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def max_output_tokens(self) -> int:
        return self.inner.max_output_tokens

    def complete(self, request: LLMRequest) -> LLMResponse:
        with self.gate():
            try:
                return self.inner.complete(request)
            except ProviderError as exc:
                self.last_error = exc
                raise
