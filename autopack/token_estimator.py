"""Token estimator: predicted output tokens for a phase, and the ``max_tokens`` ceiling to send.

The coefficient tables below are plain literals because the calibration pull request edits them with a
program (libcst): keep each entry on its own line, keys as ``(str, str)`` tuples, values as numbers.
Everything under "Logic" is a pure function of (phase features, coefficients): no filesystem reads, no
globals read except through ``current_coefficients()``.

Seeded with the original Autopack's values (v5-step2, reference §2), re-keyed to the canonical
vocabulary of ``autopack.taxonomy`` ("testing" → "tests", "documentation" → "docs"): the original keyed
PHASE_OVERHEAD by "testing", so its "tests" phases silently used the 2000 default (§10.10).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, overload

from autopack.taxonomy import DOCS_LIKE, normalise_category, normalise_complexity

if TYPE_CHECKING:  # numpy only types the calibration's vectorised calls; the estimator itself never imports it
    import numpy as np

# ==================================================================================================
# Coefficients (edited by the calibration pull request)
# ==================================================================================================

CALIBRATION_VERSION = "v5-step2"
CALIBRATION_DATE = "2025-12-29"
CALIBRATION_SAMPLES = 45

# Multiplier applied to every estimate (predicted already includes it).
SAFETY_MARGIN = 1.3
# Default buffer between predicted tokens and the budget, for groups without a calibrated factor.
BUFFER_MARGIN = 1.2
BUFFER_LOW_CONFIDENCE = 1.4
BUFFER_MANY_DELIVERABLES = 1.6
BUFFER_HIGH_COMPLEXITY_FEATURE = 1.6
BUFFER_DOC_MODELS = 2.2

# Fixed per-phase cost by (category, complexity); missing key -> DEFAULT_PHASE_OVERHEAD.
DEFAULT_PHASE_OVERHEAD = 2000
PHASE_OVERHEAD: dict[tuple[str, str], int] = {
    # implementation: 2000 -> 1120 -> 634 and 3000 -> 1860 -> 1176 (sqrt-damped, v5 + v6 telemetry)
    ("implementation", "low"): 634,
    ("implementation", "medium"): 1176,
    ("implementation", "high"): 5000,
    ("refactoring", "low"): 2500,
    ("refactoring", "medium"): 3500,
    ("refactoring", "high"): 5500,
    ("configuration", "low"): 800,
    ("configuration", "medium"): 1500,
    ("configuration", "high"): 2500,
    ("integration", "low"): 3000,
    ("integration", "medium"): 4000,
    ("integration", "high"): 6000,
    # tests: the original's "testing" row (testing/low 1500 -> 915)
    ("tests", "low"): 915,
    ("tests", "medium"): 2500,
    ("tests", "high"): 4000,
    ("docs", "low"): 1500,
    ("docs", "medium"): 2500,
    ("docs", "high"): 3500,
    ("backend", "low"): 2000,
    ("backend", "medium"): 3000,
    ("backend", "high"): 5000,
    ("frontend", "low"): 2500,
    ("frontend", "medium"): 3500,
    ("frontend", "high"): 5500,
    ("database", "low"): 2000,
    ("database", "medium"): 3000,
    ("database", "high"): 5000,
    ("deployment", "low"): 2000,
    ("deployment", "medium"): 3000,
    ("deployment", "high"): 5000,
}

# Marginal cost per deliverable by (deliverable kind, "new" | "modify").
TOKEN_WEIGHTS: dict[tuple[str, str], int] = {
    ("backend", "new"): 2000,
    ("backend", "modify"): 700,
    ("frontend", "new"): 2800,
    ("frontend", "modify"): 1100,
    ("test", "new"): 1400,
    ("test", "modify"): 600,
    ("doc", "new"): 500,
    ("doc", "modify"): 400,
    ("config", "new"): 1000,
    ("config", "modify"): 500,
    ("database", "new"): 1500,
    ("database", "modify"): 600,
}

# BUILD-142 category-aware floors by (category, complexity); ("default", complexity) for the rest.
BASE_BUDGET_BY_CATEGORY: dict[tuple[str, str], int] = {
    ("docs", "low"): 4096,
    ("docs", "medium"): 8192,
    ("docs", "high"): 12288,
    ("tests", "low"): 6144,
    ("tests", "medium"): 8192,
    ("tests", "high"): 12288,
    ("implementation", "low"): 8192,
    ("implementation", "medium"): 12288,
    ("implementation", "high"): 16384,
    ("doc_synthesis", "low"): 8192,
    ("doc_synthesis", "medium"): 12288,
    ("doc_synthesis", "high"): 16384,
    ("doc_sot_update", "low"): 8192,
    ("doc_sot_update", "medium"): 12288,
    ("doc_sot_update", "high"): 16384,
    ("default", "low"): 8192,
    ("default", "medium"): 12288,
    ("default", "high"): 16384,
}
DEFAULT_BASE_BUDGET = 8192

# Calibrated budget factors by (category, complexity): where a group has one, its ceiling is
# predicted x factor (the split-conformal quantile for the target truncation rate), replacing the
# floor and buffer above. Filled by the calibration pull request.
BUDGET_FACTORS: dict[tuple[str, str], float] = {
}

# Adaptive budgets (adaptive conformal inference), filled by the calibration pull request when its method
# is "aci". ADAPTIVE_BUDGET_FACTORS[("<category>/<complexity>", "alpha=<level>")] is the group's budget
# factor at miscoverage level <level> (its training quantile at 1 - level). A group with entries here (and
# a BUDGET_FACTORS entry) gets its factor moved at run time: its level alpha_t, kept in the database and
# updated with each finished call, starts at the target alpha, where the curve equals BUDGET_FACTORS, and
# stays between the smallest and the largest level listed; the factor is interpolated between adjacent
# entries. So the runtime never uses a factor above the group's first entry or below its last one.
ADAPTIVE_BUDGET_FACTORS: dict[tuple[str, str], float] = {
}
# ("aci", "target_alpha"): the truncation rate alpha_t is steered to; ("aci", "gamma"): the step of
# alpha_t <- clip(alpha_t + gamma * (target_alpha - truncated), smallest level, largest level).
ADAPTIVE_SETTINGS: dict[tuple[str, str], float] = {
}

# Ceiling bounds.
MIN_FACTOR_CEILING = 512
# predicted x factor is rounded up to whole tokens, minus this relative tolerance first: a factor has three
# decimals and floating point makes 100 x 1.11 = 111.00000000000001, which must not become 112.
CEIL_RELATIVE_TOLERANCE = 1e-9
MAX_OUTPUT_TOKENS = 64000
# Escalate-once after a truncation (reference §2.8).
ESCALATION_FACTOR = 1.25

# Exploration (opt-in, off unless a share is given): at most this share of first attempts is sent at the
# escalation ceiling, so the calibration sees some of a heavily cut group's long outputs uncensored.
MAX_EXPLORATION_SHARE = 0.2

# Overrides that raise the ceiling for groups without a calibrated factor (each is recorded).
LOCKFILE_OVERRIDE = 12000
FRONTEND_DEPLOYMENT_OVERRIDE = 16384
BACKEND_WIDE_SCOPE_OVERRIDE = 12000
FULL_FILE_MODE_OVERRIDE = 16384

# Documentation models (reference §2.3).
DOC_SOT_CONTEXT: dict[tuple[str, str], int] = {
    ("scope", "none"): 3000,
    ("scope", "some"): 2200,
    ("scope", "wide"): 1500,
}
DOC_SOT_WRITE_PER_DELIVERABLE = 900
DOC_SOT_CONSISTENCY_SHARE = 0.15
DOC_SYNTHESIS_INVESTIGATE: dict[tuple[str, str], int] = {
    ("scope", "none"): 2500,
    ("scope", "some"): 2000,
    ("scope", "wide"): 1500,
}
DOC_SYNTHESIS_API_REFERENCE = 1200
DOC_SYNTHESIS_EXAMPLES = 1400
DOC_SYNTHESIS_PER_DELIVERABLE = 850
DOC_SYNTHESIS_COORDINATION_SHARE = 0.12

# Estimate when a phase names no deliverables, by complexity.
NO_DELIVERABLES_ESTIMATE: dict[tuple[str, str], int] = {
    ("none", "low"): 8192,
    ("none", "medium"): 12288,
    ("none", "high"): 16384,
}


# ==================================================================================================
# Logic
# ==================================================================================================


def ceil_tokens(value: float) -> int:
    """⌈value⌉ of a product predicted × factor, without the spurious token floating point adds:
    ⌈100 × 0.14⌉ is 14, not 15 (the same nudge as ``factor_product``, so every ceiling rounds alike)."""
    return math.ceil(value - abs(value) * CEIL_RELATIVE_TOLERANCE)


@dataclass(frozen=True)
class AdaptiveCurve:
    """One group's reviewed factor curve: ``factors[i]`` at miscoverage level ``alphas[i]`` (ascending)."""

    alphas: tuple[float, ...]
    factors: tuple[float, ...]
    _logs: tuple[tuple[float, ...], tuple[float, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        logs = (tuple(math.log(a) for a in self.alphas), tuple(math.log(f) for f in self.factors))
        object.__setattr__(self, "_logs", logs)

    def clip(self, alpha: float) -> float:
        return min(max(alpha, self.alphas[0]), self.alphas[-1])

    def factor_at(self, alpha: float) -> float:
        """The factor at level alpha (clipped to the curve): log-linear between adjacent reviewed entries,
        so it always lies between two values a reviewer approved."""
        a = self.clip(alpha)
        i = bisect.bisect_left(self.alphas, a)
        if self.alphas[i] == a:
            return self.factors[i]
        la, lf = self._logs
        w = (math.log(a) - la[i - 1]) / (la[i] - la[i - 1])
        return min(self.factors[i - 1], max(self.factors[i], math.exp((1.0 - w) * lf[i - 1] + w * lf[i])))

    @property
    def fingerprint(self) -> str:
        """Identifies the reviewed curve: runtime state kept for another curve is not used for this one."""
        text = ",".join(f"{a!r}:{f!r}" for a, f in zip(self.alphas, self.factors, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def adaptive_group_key(group: tuple[str, str]) -> str:
    return f"{group[0]}/{group[1]}"


def adaptive_level_key(alpha: float) -> str:
    return f"alpha={alpha:.4f}"


def parse_adaptive_curves(table: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], AdaptiveCurve]:
    """ADAPTIVE_BUDGET_FACTORS as one ``AdaptiveCurve`` per (category, complexity)."""
    points: dict[tuple[str, str], dict[float, float]] = {}
    for (group_key, level_key), factor in table.items():
        category, sep, complexity = group_key.partition("/")
        name, eq, level = level_key.partition("=")
        if not (sep and category and complexity and eq and name == "alpha"):
            raise ValueError(f"ADAPTIVE_BUDGET_FACTORS key {(group_key, level_key)!r} is not "
                             "('<category>/<complexity>', 'alpha=<level>')")
        points.setdefault((category, complexity), {})[float(level)] = float(factor)
    return {
        group: AdaptiveCurve(tuple(sorted(p)), tuple(p[a] for a in sorted(p)))
        for group, p in points.items()
    }


def aci_step(alpha_t: float, err: int, target: float, gamma: float, low: float, high: float) -> float:
    """Adaptive conformal inference, clipped: alpha_t + gamma (target - err), kept within [low, high]."""
    return min(max(alpha_t + gamma * (target - err), low), high)


@dataclass(frozen=True)
class Coefficients:
    """One coefficient set. ``current_coefficients()`` reads the literals above."""

    version: str
    phase_overhead: Mapping[tuple[str, str], int]
    token_weights: Mapping[tuple[str, str], int]
    base_budgets: Mapping[tuple[str, str], int]
    budget_factors: Mapping[tuple[str, str], float]
    safety_margin: float = SAFETY_MARGIN
    buffer_margin: float = BUFFER_MARGIN
    default_phase_overhead: int = DEFAULT_PHASE_OVERHEAD
    #: Reviewed ACI curves by group, and the ACI settings (None: no adaptive budgets).
    adaptive_curves: Mapping[tuple[str, str], AdaptiveCurve] = field(default_factory=dict)
    adaptive_target: float | None = None
    adaptive_gamma: float | None = None

    def adaptive_curve(self, group: tuple[str, str]) -> AdaptiveCurve | None:
        """The group's curve when adaptive budgets apply to it (it also needs a calibrated factor)."""
        if self.adaptive_target is None or self.adaptive_gamma is None or group not in self.budget_factors:
            return None
        return self.adaptive_curves.get(group)


def current_coefficients() -> Coefficients:
    return Coefficients(
        version=CALIBRATION_VERSION,
        phase_overhead=dict(PHASE_OVERHEAD),
        token_weights=dict(TOKEN_WEIGHTS),
        base_budgets=dict(BASE_BUDGET_BY_CATEGORY),
        budget_factors=dict(BUDGET_FACTORS),
        adaptive_curves=parse_adaptive_curves(ADAPTIVE_BUDGET_FACTORS),
        adaptive_target=ADAPTIVE_SETTINGS.get(("aci", "target_alpha")),
        adaptive_gamma=ADAPTIVE_SETTINGS.get(("aci", "gamma")),
    )


@dataclass(frozen=True)
class FileStats:
    """What the estimator needs to know about an existing file (collected by the caller)."""

    loc: int
    import_lines: int
    max_indent: int


@dataclass(frozen=True)
class PhaseFeatures:
    """Everything the estimator reads about a phase. Raw category/complexity; normalised on entry."""

    category: str | None
    complexity: str | None
    deliverables: tuple[str, ...]
    description: str = ""
    scope_paths: tuple[str, ...] = ()
    read_only_context: tuple[str, ...] = ()
    builder_mode: str | None = None
    #: Stats of deliverable paths that already exist in the workspace (absent = a new file).
    existing_files: Mapping[str, FileStats] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    predicted_output_tokens: int
    confidence: float
    category: str
    complexity: str
    raw_category: str | None
    raw_complexity: str | None
    category_known: bool
    complexity_known: bool
    model: str
    deliverable_count: int
    breakdown: dict[str, int]
    #: Counts by (kind, new|modify): the features the joint calibration regresses on.
    deliverable_counts: dict[str, int]
    doc_features: dict[str, bool]
    context_quality: str
    sot_file_name: str | None = None

    @property
    def group(self) -> tuple[str, str]:
        return (self.category, self.complexity)


@dataclass(frozen=True)
class Contribution:
    """One named step in deciding the ceiling: what it was, the value after it, and why."""

    name: str
    value: int
    detail: str


@dataclass(frozen=True)
class AdaptiveLevel:
    """A group's runtime ACI state, read from the database before the call (``decide_ceiling``'s input)."""

    alpha_t: float
    fingerprint: str  # of the curve the state was built with; another curve's state is not used
    n_feedback: int = 0


@dataclass(frozen=True)
class AdaptiveUse:
    """How an adaptive ceiling was set; the telemetry recorder feeds the call's outcome back with it."""

    group: tuple[str, str]
    alpha_t: float
    factor: float
    raw_ceiling: int  # predicted x factor, before the estimator's clamps
    target_alpha: float
    gamma: float
    alpha_min: float
    alpha_max: float
    fingerprint: str

    def error(self, output_tokens: int, truncated: bool) -> int:
        """1 when the call reached the adaptive ceiling (reaching the ceiling = truncated), else 0.

        Judged against the unclamped ceiling, so the 512-token floor does not blind the update: a call
        cut by a lower model maximum is a miss too (its length is unknown beyond the cut).
        """
        return int(truncated or output_tokens >= self.raw_ceiling)


@dataclass(frozen=True)
class Exploration:
    """Opt-in exploration for one first attempt: it is sent at the escalation ceiling when ``chosen``.

    ``key`` names the call (seed, run, phase, attempt), so the choice is deterministic and about ``share`` of
    the calls a drain makes are chosen, whatever their order.
    """

    share: float
    key: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= MAX_EXPLORATION_SHARE:
            raise ValueError(f"exploration share {self.share} is outside [0, {MAX_EXPLORATION_SHARE}]")

    @property
    def chosen(self) -> bool:
        digest = hashlib.sha256(self.key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64 < self.share

    @classmethod
    def for_call(cls, share: float, seed: int, run_id: str, phase_id: str, attempt_index: int) -> Exploration | None:
        """The exploration of one first attempt (None when the share is 0: exploration off)."""
        return cls(share, f"{seed}|{run_id}|{phase_id}|{attempt_index}") if share > 0 else None


@dataclass(frozen=True)
class CeilingDecision:
    selected_budget: int
    actual_max_tokens: int
    contributions: tuple[Contribution, ...]
    calibrated: bool
    #: Set when an adaptive factor decided the ceiling of a first attempt (the outcome feeds alpha_t back).
    adaptive: AdaptiveUse | None = None

    def as_records(self) -> list[dict[str, object]]:
        return [{"name": c.name, "value": c.value, "detail": c.detail} for c in self.contributions]


_PATH_TOKEN = re.compile(r"[\w./\\-]+\.[A-Za-z0-9]{1,8}")
_VERB = re.compile(r"^\s*(create|add|new|modify|update|write|implement)\b", re.IGNORECASE)
_NEW_VERB = re.compile(r"^\s*(create|add|new|write)\b", re.IGNORECASE)
_SOT_NAMES = frozenset({"build_log.md", "build_history.md", "changelog.md", "history.md", "release_notes.md"})
_CONFIG_EXT = (".yml", ".yaml", ".json", ".toml", ".txt", ".ini", ".cfg")
_FRONTEND_EXT = (".tsx", ".jsx", ".vue", ".svelte", ".ts", ".js", ".css", ".html")


@lru_cache(maxsize=65536)
def deliverable_path(text: str) -> str:
    """The file path a deliverable names (first ``name.ext`` token), else the text without verbs."""
    match = _PATH_TOKEN.search(text)
    if match:
        return match.group(0).replace("\\", "/")
    stripped = _VERB.sub("", text)
    return re.sub(r"\(.*\)\s*$", "", stripped).strip()


@lru_cache(maxsize=65536)
def _parts(path: str) -> tuple[str, str]:
    """(name, suffix) of a POSIX path, as ``PurePosixPath`` gives them (cached: the same paths recur)."""
    pure = PurePosixPath(path)
    return pure.name, pure.suffix


@lru_cache(maxsize=65536)
def deliverable_kind(path: str, category: str) -> str:
    """test / doc / config / frontend / database / backend (first matching rule wins)."""
    p = path.lower()
    name = _parts(p)[0]
    if (
        p.startswith("tests/")
        or "/tests/" in p
        or name.startswith("test_")
        or name == "conftest.py"
        or p.endswith(("_test.py", ".spec.ts", ".spec.tsx", ".test.ts", ".test.tsx"))
    ):
        return "test"
    if p.startswith("docs/") or p.endswith((".md", ".rst")):
        return "doc"
    if p.endswith(_CONFIG_EXT) or "alembic/versions" in p or "migration" in p:
        return "config"
    if p.endswith(_FRONTEND_EXT) or category == "frontend":
        return "frontend"
    if p.endswith(".sql"):
        return "database"
    return "backend"


def file_complexity_factor(stats: FileStats) -> float:
    """Modifying a long, import-heavy, deeply nested file costs more: clamp(loc·imports·nesting, 0.5, 2)."""
    loc = 0.7 if stats.loc < 50 else 1.0 if stats.loc < 200 else 1.3 if stats.loc < 500 else 1.5
    imports = 0.9 if stats.import_lines < 5 else 1.0 if stats.import_lines < 15 else 1.2
    nesting = 0.9 if stats.max_indent < 8 else 1.0 if stats.max_indent < 16 else 1.2
    return min(2.0, max(0.5, loc * imports * nesting))


def _context_tier(scope_paths: Sequence[str]) -> tuple[str, str]:
    n = len(scope_paths)
    return ("scope", "none" if n == 0 else "some" if n <= 10 else "wide")


def _context_quality(scope_paths: Sequence[str]) -> str:
    n = len(scope_paths)
    return "none" if n == 0 else "some" if n <= 3 else "strong"


def _whole_phrases(*phrases: str) -> re.Pattern[str]:
    """Any of ``phrases`` as a whole phrase (not inside a longer word), compiled once."""
    return re.compile(r"(?<![\w])(?:" + "|".join(re.escape(p) for p in phrases) + r")(?![\w])")


_API_REFERENCE = _whole_phrases("api_reference", "api reference", "api.md", "rest api")
_EXAMPLES = _whole_phrases("examples.md", "usage examples", "code examples", "sample code", "snippets")
_RESEARCH = _whole_phrases("from scratch", "investigate", "create documentation for")
_USAGE_GUIDE = _whole_phrases("usage_guide", "user guide", "getting started", "tutorial")


def doc_features(deliverables: Sequence[str], description: str) -> dict[str, bool]:
    """Doc-synthesis signals, matched as whole phrases (the original's substrings misfired, §10.14)."""
    text = (" ".join(deliverables) + " " + description).lower()
    desc = description.lower()
    return {
        "api_reference_required": bool(_API_REFERENCE.search(text)),
        "examples_required": bool(_EXAMPLES.search(text)),
        "research_required": bool(_RESEARCH.search(desc)),
        "usage_guide_required": bool(_USAGE_GUIDE.search(text)),
    }


def estimate(features: PhaseFeatures, coefficients: Coefficients | None = None) -> Estimate:
    """Predicted output tokens (safety margin included) with a breakdown of where they come from."""
    coeffs = coefficients or current_coefficients()
    cat = normalise_category(features.category)
    cx = normalise_complexity(features.complexity)
    deliverables = [d for d in features.deliverables if d and d.strip()]
    paths = [deliverable_path(d) for d in deliverables]
    kinds = [deliverable_kind(p, cat.value) for p in paths]
    flags = doc_features(deliverables, features.description)
    common = {
        "complexity": cx.value,
        "raw_category": cat.raw,
        "raw_complexity": cx.raw,
        "category_known": cat.known,
        "complexity_known": cx.known,
        "deliverable_count": len(deliverables),
        "doc_features": flags,
        "context_quality": _context_quality(features.scope_paths),
    }

    if not deliverables:
        predicted = NO_DELIVERABLES_ESTIMATE.get(("none", cx.value), DEFAULT_BASE_BUDGET)
        return Estimate(predicted, 0.5, cat.value, model="no_deliverables", breakdown={"default": predicted},
                        deliverable_counts={}, **common)  # type: ignore[arg-type]

    category = cat.value
    pure_doc = all(kind == "doc" for kind in kinds)
    if pure_doc and category not in DOCS_LIKE:
        category = "docs"
    tier = _context_tier(features.scope_paths)
    if pure_doc:
        sot = next((_parts(p)[0] for p in paths if _parts(p)[0].lower() in _SOT_NAMES), None)
        if sot is not None:
            context = DOC_SOT_CONTEXT[tier]
            write = DOC_SOT_WRITE_PER_DELIVERABLE * max(1, len(deliverables))
            consistency = int(DOC_SOT_CONSISTENCY_SHARE * write)
            predicted = int((context + write + consistency) * coeffs.safety_margin)
            return Estimate(predicted, 0.70, "doc_sot_update", model="doc_sot_update",
                            breakdown={"context": context, "write": write, "consistency": consistency},
                            deliverable_counts={"doc:new": len(deliverables)}, sot_file_name=sot,
                            **common)  # type: ignore[arg-type]
        synthesis = flags["api_reference_required"] or (
            flags["examples_required"] and (flags["research_required"] or flags["usage_guide_required"])
        )
        if category == "docs" and synthesis:
            investigate = DOC_SYNTHESIS_INVESTIGATE[tier]
            api = DOC_SYNTHESIS_API_REFERENCE if flags["api_reference_required"] else 0
            examples = DOC_SYNTHESIS_EXAMPLES if flags["examples_required"] else 0
            writing = DOC_SYNTHESIS_PER_DELIVERABLE * len(deliverables)
            coordination = int(DOC_SYNTHESIS_COORDINATION_SHARE * writing) if len(deliverables) >= 5 else 0
            total = investigate + api + examples + writing + coordination
            predicted = int(total * coeffs.safety_margin)
            return Estimate(predicted, 0.75, "doc_synthesis", model="doc_synthesis",
                            breakdown={"investigate": investigate, "api_reference": api, "examples": examples,
                                       "writing": writing, "coordination": coordination},
                            deliverable_counts={"doc:new": len(deliverables)}, **common)  # type: ignore[arg-type]

    counts: dict[str, int] = {}
    breakdown: dict[str, int] = {}
    marginal = 0.0
    for text, path, kind in zip(deliverables, paths, kinds, strict=True):
        stats = features.existing_files.get(path)
        is_new = stats is None or bool(_NEW_VERB.match(text))
        mode = "new" if is_new else "modify"
        weight = coeffs.token_weights.get((kind, mode), coeffs.token_weights.get(("backend", mode), 500))
        cost = weight if is_new or stats is None else weight * file_complexity_factor(stats)
        marginal += cost
        counts[f"{kind}:{mode}"] = counts.get(f"{kind}:{mode}", 0) + 1
        breakdown[f"{kind}:{mode}"] = breakdown.get(f"{kind}:{mode}", 0) + int(cost)
    overhead = coeffs.phase_overhead.get((category, cx.value), coeffs.default_phase_overhead)
    breakdown["overhead"] = overhead
    predicted = int((overhead + marginal) * coeffs.safety_margin)
    with_ext = sum(1 for p in paths if _parts(p)[1]) / len(paths)
    with_verb = sum(1 for d in deliverables if _VERB.match(d)) / len(deliverables)
    confidence = min(1.0, 0.5 + 0.3 * with_ext + 0.2 * with_verb)
    return Estimate(predicted, round(confidence, 3), category, model="overhead_plus_marginal",
                    breakdown=breakdown, deliverable_counts=counts, **common)  # type: ignore[arg-type]


def base_budget(category: str, complexity: str, coefficients: Coefficients) -> int:
    return coefficients.base_budgets.get(
        (category, complexity), coefficients.base_budgets.get(("default", complexity), DEFAULT_BASE_BUDGET)
    )


def buffer_for(est: Estimate, coefficients: Coefficients) -> tuple[float, str]:
    """The buffer multiplier and the rule that chose it (reference §2.5)."""
    if est.category in ("doc_synthesis", "doc_sot_update"):
        return BUFFER_DOC_MODELS, "doc model"
    buffer, reason = coefficients.buffer_margin, "default"
    if est.confidence < 0.7 and BUFFER_LOW_CONFIDENCE > buffer:
        buffer, reason = BUFFER_LOW_CONFIDENCE, "low confidence"
    if est.deliverable_count >= 8 and BUFFER_MANY_DELIVERABLES > buffer:
        buffer, reason = BUFFER_MANY_DELIVERABLES, ">= 8 deliverables"
    raw = (est.raw_category or "").strip().lower()
    if raw in ("implement_feature", "integration") and est.complexity == "high" and BUFFER_HIGH_COMPLEXITY_FEATURE > buffer:
        buffer, reason = BUFFER_HIGH_COMPLEXITY_FEATURE, "high-complexity feature/integration"
    return buffer, reason


@overload
def factor_product(predicted: float, factor: float) -> float: ...
@overload
def factor_product(predicted: np.ndarray, factor: np.ndarray | float) -> np.ndarray: ...
def factor_product(predicted: float | np.ndarray, factor: float | np.ndarray) -> float | np.ndarray:
    """predicted × factor, nudged down by ``CEIL_RELATIVE_TOLERANCE`` so rounding it up adds no spurious token.

    Plain arithmetic on purpose: the calibration applies the same function to numpy arrays, so the scalar
    ceiling here and the vectorised one there cannot drift apart.
    """
    product = predicted * factor
    nudged: float | np.ndarray = product - abs(product) * CEIL_RELATIVE_TOLERANCE
    return nudged


def decide_ceiling(
    est: Estimate,
    features: PhaseFeatures,
    coefficients: Coefficients | None = None,
    *,
    escalated_to: int | None = None,
    model_max_output: int = MAX_OUTPUT_TOKENS,
    adaptive: AdaptiveLevel | None = None,
    explore: Exploration | None = None,
) -> CeilingDecision:
    """The one function that decides ``selected_budget`` (intent) and ``actual_max_tokens`` (sent).

    Every step that changes the number is recorded as a named contribution, so no override can hide
    the estimator again (the original's five silent overrides, §10.13). ``adaptive`` is the group's
    runtime ACI state (None: none yet); it only matters for a group with a reviewed adaptive curve.
    ``explore`` (first attempts only): when chosen, the call is sent at the ceiling an escalation after a
    truncation would use, and its output is then seen uncensored more often (recorded as ``exploration``).
    """
    coeffs = coefficients or current_coefficients()
    contributions: list[Contribution] = [
        Contribution("predicted", est.predicted_output_tokens, f"{est.model}, confidence {est.confidence}")
    ]
    factor = coeffs.budget_factors.get(est.group)
    cap = min(MAX_OUTPUT_TOKENS, model_max_output)
    use: AdaptiveUse | None = None
    if factor is not None:
        raw_ceiling = math.ceil(factor_product(est.predicted_output_tokens, factor))
        selected = min(max(raw_ceiling, MIN_FACTOR_CEILING), cap)
        contributions.append(
            Contribution("calibrated_factor", selected, f"{est.predicted_output_tokens} x {factor} for {est.group}"
                         f" (clamped to [{MIN_FACTOR_CEILING}, {cap}])")
        )
        use = _adaptive_use(est, coeffs, adaptive)
        if use is not None:
            selected = min(max(use.raw_ceiling, MIN_FACTOR_CEILING), cap)
            state = ("no runtime state yet" if adaptive is None else
                     "runtime state of another curve, reset" if adaptive.fingerprint != use.fingerprint else
                     f"runtime state after {adaptive.n_feedback} finished calls")
            contributions.append(
                Contribution("adaptive", selected, f"ACI alpha_t={use.alpha_t:.4f} (target {use.target_alpha}, "
                             f"{state}): {est.predicted_output_tokens} x {use.factor:.4f}, reviewed factor range "
                             f"[{coeffs.adaptive_curves[est.group].factors[-1]}, "
                             f"{coeffs.adaptive_curves[est.group].factors[0]}]")
            )
    else:
        floor = base_budget(est.category, est.complexity, coeffs)
        buffer, why = buffer_for(est, coeffs)
        buffered = int(est.predicted_output_tokens * buffer)
        contributions.append(Contribution("buffer", buffered, f"x{buffer} ({why})"))
        contributions.append(Contribution("floor", floor, f"base budget for {est.group}"))
        selected = min(max(floor, buffered), MAX_OUTPUT_TOKENS)
    contributions.append(Contribution("selected_budget", selected, "estimator intent"))

    ceiling = selected
    if factor is None:
        for name, minimum, applies in _overrides(est, features):
            if applies and minimum > ceiling:
                ceiling = minimum
                contributions.append(Contribution("override", ceiling, name))
    if escalated_to is not None and escalated_to > ceiling:
        ceiling = escalated_to
        contributions.append(Contribution("escalation", ceiling, f"retry after truncation: {escalated_to}"))
    elif escalated_to is None and explore is not None and explore.chosen:
        ceiling = escalate(selected_budget=selected, actual_max_tokens=ceiling, tokens_used=0,
                           complexity=est.complexity).retry_max_tokens
        contributions.append(Contribution("exploration", ceiling, f"a share {explore.share} of first attempts is sent "
                                          "at the escalation ceiling, so long outputs are seen uncensored"))
    if ceiling > cap:
        ceiling = cap
        contributions.append(Contribution("model_max", ceiling, f"model maximum output {cap}"))
    return CeilingDecision(selected, ceiling, tuple(contributions), factor is not None,
                           use if escalated_to is None else None)


def _adaptive_use(est: Estimate, coeffs: Coefficients, level: AdaptiveLevel | None) -> AdaptiveUse | None:
    """The adaptive factor for the group at its runtime level (the target when it has no valid state)."""
    curve = coeffs.adaptive_curve(est.group)
    if curve is None:
        return None
    assert coeffs.adaptive_target is not None and coeffs.adaptive_gamma is not None
    fingerprint = curve.fingerprint
    valid = level is not None and level.fingerprint == fingerprint and math.isfinite(level.alpha_t)
    alpha_t = curve.clip(level.alpha_t if valid and level is not None else coeffs.adaptive_target)
    factor = curve.factor_at(alpha_t)
    return AdaptiveUse(est.group, alpha_t, factor, ceil_tokens(est.predicted_output_tokens * factor),
                       coeffs.adaptive_target, coeffs.adaptive_gamma, curve.alphas[0], curve.alphas[-1], fingerprint)


def _overrides(est: Estimate, features: PhaseFeatures) -> list[tuple[str, int, bool]]:
    scope = [p.lower() for p in (*features.scope_paths, *features.deliverables)]
    docs = est.category in DOCS_LIKE
    return [
        ("lockfile or package.json in scope", LOCKFILE_OVERRIDE,
         any(p.endswith(("package.json", "package-lock.json", "poetry.lock", "yarn.lock")) for p in scope)),
        ("frontend/deployment category", FRONTEND_DEPLOYMENT_OVERRIDE, est.category in ("frontend", "deployment")),
        ("backend with >= 3 scope paths", BACKEND_WIDE_SCOPE_OVERRIDE,
         est.category == "backend" and len(features.scope_paths) >= 3),
        ("full_file builder mode", FULL_FILE_MODE_OVERRIDE, (features.builder_mode or "") == "full_file" and not docs),
    ]


@dataclass(frozen=True)
class Escalation:
    base_value: int
    base_source: str
    factor: float
    retry_max_tokens: int


def escalate(
    *, selected_budget: int, actual_max_tokens: int, tokens_used: int, complexity: str
) -> Escalation:
    """Escalate once after truncation: ×1.25 of the largest known budget, capped (reference §2.8)."""
    candidates = {"selected_budget": selected_budget, "actual_max_tokens": actual_max_tokens, "tokens_used": tokens_used}
    source, base = max(candidates.items(), key=lambda kv: kv[1])
    if base <= 0:
        source = "complexity_default"
        base = NO_DELIVERABLES_ESTIMATE.get(("none", normalise_complexity(complexity).value), DEFAULT_BASE_BUDGET)
    retry = min(int(base * ESCALATION_FACTOR), MAX_OUTPUT_TOKENS)
    return Escalation(base, source, ESCALATION_FACTOR, retry)


def plan_call(
    features: PhaseFeatures,
    coefficients: Coefficients | None = None,
    *,
    escalated_to: int | None = None,
    model_max_output: int = MAX_OUTPUT_TOKENS,
    adaptive: Callable[[tuple[str, str]], AdaptiveLevel | None] | None = None,
    explore: Exploration | None = None,
) -> tuple[Estimate, CeilingDecision]:
    """Estimate and decide the ceiling in one call (what the phase executor uses before each call).

    ``adaptive`` looks up the runtime ACI state of the estimated group; it is only asked for groups with a
    reviewed adaptive curve (every other group is planned without touching it). ``explore``: see
    ``decide_ceiling``.
    """
    coeffs = coefficients or current_coefficients()
    est = estimate(features, coeffs)
    level = adaptive(est.group) if adaptive is not None and coeffs.adaptive_curve(est.group) is not None else None
    return est, decide_ceiling(est, features, coeffs, escalated_to=escalated_to, model_max_output=model_max_output,
                               adaptive=level, explore=explore)


def features_record(features: PhaseFeatures, est: Estimate) -> dict[str, object]:
    """What the telemetry row stores so calibration can re-estimate the call with other coefficients."""
    return {
        "category": features.category,
        "complexity": features.complexity,
        "deliverables": list(features.deliverables),
        "description": features.description,
        "scope_paths": list(features.scope_paths),
        "read_only_context": list(features.read_only_context),
        "builder_mode": features.builder_mode,
        "existing_files": {
            path: {"loc": s.loc, "import_lines": s.import_lines, "max_indent": s.max_indent}
            for path, s in features.existing_files.items()
        },
        "deliverable_counts": dict(est.deliverable_counts),
        "model": est.model,
        "category_known": est.category_known,
        "complexity_known": est.complexity_known,
    }


def features_from_record(record: Mapping[str, object]) -> PhaseFeatures:
    """Inverse of ``features_record`` (extra keys ignored)."""
    existing = record.get("existing_files") or {}
    assert isinstance(existing, Mapping)
    return PhaseFeatures(
        category=record.get("category"),  # type: ignore[arg-type]
        complexity=record.get("complexity"),  # type: ignore[arg-type]
        deliverables=tuple(record.get("deliverables") or ()),  # type: ignore[arg-type]
        description=str(record.get("description") or ""),
        scope_paths=tuple(record.get("scope_paths") or ()),  # type: ignore[arg-type]
        read_only_context=tuple(record.get("read_only_context") or ()),  # type: ignore[arg-type]
        builder_mode=record.get("builder_mode"),  # type: ignore[arg-type]
        existing_files={p: FileStats(**s) for p, s in existing.items()},
    )
