"""What one LLM call costs and returns: usage counts and the results `nodes.llm.calls` hands back.

Kept apart from the retry policy so nodes, reports and backends can share the types without
importing the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from langchain_core.messages import BaseMessage
from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)


@dataclass
class Usage:
    """Count model calls, tokens and seconds spent waiting for the model (not backoff sleeps)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    asks: int = 0
    """Answers asked for (one per `call_*`, whatever its retries): the base of fallback rates."""

    def add(self, other: Usage) -> Usage:
        """Accumulate `other` in place and return self, so a running total stays one object."""
        self.calls += other.calls
        self.asks += other.asks
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds += other.seconds
        return self

    def __add__(self, other: Usage) -> Usage:
        return Usage().add(self).add(other)

    @property
    def total_tokens(self) -> int:
        """Return prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int | float]:
        """Return JSON-native fields for step records and reports."""
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 6),
            "asks": self.asks,
        }

    @classmethod
    def from_message(cls, message: BaseMessage | None, seconds: float = 0.0) -> Usage:
        """Read token counts from `usage_metadata`, else from OpenAI-style `token_usage`."""
        usage = cls(calls=1, seconds=seconds)
        if message is None:
            return usage
        meta = getattr(message, "usage_metadata", None)
        if meta:
            usage.prompt_tokens = int(meta.get("input_tokens") or 0)
            usage.completion_tokens = int(meta.get("output_tokens") or 0)
            return usage
        token_usage = (message.response_metadata or {}).get("token_usage") or {}
        usage.prompt_tokens = int(token_usage.get("prompt_tokens") or 0)
        usage.completion_tokens = int(token_usage.get("completion_tokens") or 0)
        return usage


@dataclass
class StructuredResult(Generic[T]):
    """Hold a validated answer, or None with the reason the caller's fallback was needed."""

    value: T | None
    ok: bool
    attempts: int
    error: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class TextResult:
    """Hold a free-text answer, or None with the reason the caller's fallback was needed."""

    text: str | None
    ok: bool
    attempts: int
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
