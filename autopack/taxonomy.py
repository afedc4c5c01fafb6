"""The one normaliser for categories and complexities.

The original grouped by whatever spelling a phase used ("tests" vs "testing", "MEDIUM" vs "medium"), so
its calibration split groups and its coefficient table missed keys (reference §10.10). Every value is
normalised here, once, at entry. An unknown value is kept (lower-cased) and flagged, never defaulted.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = (
    "implementation",
    "tests",
    "docs",
    "doc_synthesis",
    "doc_sot_update",
    "refactoring",
    "configuration",
    "integration",
    "backend",
    "frontend",
    "database",
    "deployment",
    "bugfix",
    "research",
)
COMPLEXITIES: tuple[str, ...] = ("low", "medium", "high", "maintenance")

DOCS_LIKE: frozenset[str] = frozenset({"docs", "doc_synthesis", "doc_sot_update"})

_CATEGORY_ALIASES: dict[str, str] = {
    "implement_feature": "implementation",
    "implement": "implementation",
    "feature": "implementation",
    "testing": "tests",
    "test": "tests",
    "documentation": "docs",
    "doc": "docs",
    "doc_write": "docs",
    "config": "configuration",
    "bug_fix": "bugfix",
    "fix": "bugfix",
    "refactor": "refactoring",
}
_COMPLEXITY_ALIASES: dict[str, str] = {
    "simple": "low",
    "trivial": "low",
    "easy": "low",
    "moderate": "medium",
    "med": "medium",
    # Ambiguous spellings round up: a too-high budget costs reserve, a too-low one truncates.
    "medium-high": "high",
    "medium_high": "high",
    "critical": "high",
    "complex": "high",
}

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Normalised:
    """A canonical value, the raw input it came from, and whether it is in our vocabulary."""

    value: str
    raw: str | None
    known: bool


def _clean(raw: object) -> str:
    return str(raw).strip().lower().replace(" ", "_").replace("-", "_") if raw is not None else ""


def normalise_category(raw: object) -> Normalised:
    """``IMPLEMENT_FEATURE`` → implementation, ``testing`` → tests, ``documentation`` → docs, …"""
    key = _clean(raw)
    if not key:
        return Normalised(UNKNOWN, None if raw is None else str(raw), False)
    value = _CATEGORY_ALIASES.get(key, key)
    return Normalised(value, str(raw), value in CATEGORIES)


def normalise_complexity(raw: object) -> Normalised:
    """``MEDIUM`` → medium, ``SIMPLE`` → low, ``MEDIUM-HIGH`` → high; unknown kept and flagged."""
    key = str(raw).strip().lower() if raw is not None else ""
    if not key:
        return Normalised(UNKNOWN, None if raw is None else str(raw), False)
    value = _COMPLEXITY_ALIASES.get(key, _COMPLEXITY_ALIASES.get(_clean(raw), key))
    return Normalised(value, str(raw), value in COMPLEXITIES)


def category_spellings() -> tuple[str, ...]:
    """Every lower-case spelling ``normalise_category`` accepts as known: the categories and their aliases."""
    return tuple(sorted({*CATEGORIES, *_CATEGORY_ALIASES}))


def complexity_spellings() -> tuple[str, ...]:
    """Every lower-case spelling ``normalise_complexity`` accepts as known."""
    return tuple(sorted({*COMPLEXITIES, *_COMPLEXITY_ALIASES}))


def canonical_category(raw: object) -> str:
    return normalise_category(raw).value


def canonical_complexity(raw: object) -> str:
    return normalise_complexity(raw).value


def is_docs_like(category: object) -> bool:
    return canonical_category(category) in DOCS_LIKE
