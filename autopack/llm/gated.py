"""A provider wrapper that makes every call inside a caller-supplied gate (e.g. a provider-gate slot).

The gate wraps the provider's whole ``complete`` (its own retry loop included): a call retried after a 429
keeps its slot through the backoff, so a rate-limited provider sees fewer callers, not more.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from autopack.llm.base import LLMProvider, LLMRequest, LLMResponse


@dataclass
class GatedProvider:
    inner: LLMProvider
    gate: Callable[[], AbstractContextManager[object]]

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
            return self.inner.complete(request)
