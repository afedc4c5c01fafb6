"""Simulated provider: deterministic, offline, heavy-tailed output lengths, real file contents.

Why it exists: collecting telemetry, draining and calibrating must be exercisable without a paid API. To
give calibration something real to correct, its *true* output lengths deliberately differ from the
estimator's shipped coefficients (see ``SIM_DISTRIBUTION``): implementation phases come out at roughly
half the prediction (as the original's real data did, reference §10.11), tests a bit shorter, docs longer,
and a log-t draw gives a heavy upper tail so some phases truncate and escalate like a real model.

How a length is drawn (all parameters in ``SIM_DISTRIBUTION``):

    median  = phase_base[(category, complexity)] + Σ per_deliverable[kind of each deliverable]
    phase   = median · exp(sigma[category] · T_df)          T_df: Student-t, seeded by (seed, run, phase)
    length  = phase  · exp(attempt_sigma · Z)               Z: normal, seeded by (seed, run, phase, attempt, call)

A provider built with ``laws`` changes the law of chosen groups (``GroupLaw``: a wider spread, a heavier tail, a
scaled median, e.g. one that drifts week by week); ``phase_law`` is the law a call is drawn from, so a benchmark can
compute the true truncation of a ceiling from the same numbers the draw uses.

Output tokens are counted as ``ceil(characters / 4)``. If the drawn length exceeds ``max_tokens`` the text
is cut at ``4·max_tokens`` characters and the stop reason is ``max_tokens``, like a real model.

Test markers in a phase description (or the provider's ``force`` option):
``[sim:truncate]`` every attempt overflows; ``[sim:truncate-once]`` only attempt 0 overflows;
``[sim:boundary]`` raises ``LLMBoundaryError``; ``[sim:auth-error]`` raises ``ProviderAuthError``;
``[sim:unavailable]`` raises ``ProviderTransientError``; ``[sim:invalid-output]`` writes .py files that do
not compile; ``[sim:missing-file]`` omits the last deliverable.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from autopack.llm.base import (
    LLMBoundaryError,
    LLMRequest,
    LLMResponse,
    ProviderAuthError,
    ProviderTransientError,
    is_truncated,
    normalise_finish_reason,
)
from autopack.llm.builder_format import block_overhead, render_files
from autopack.logging import get_logger
from autopack.taxonomy import canonical_category, canonical_complexity
from autopack.token_estimator import deliverable_kind, deliverable_path

log = get_logger(__name__)

PROVIDER_NAME = "simulated"
DEFAULT_MODEL = "sim-builder-1"
CHARS_PER_TOKEN = 4

# ==================================================================================================
# The ONE table of the simulated output-length distribution. Compare with token_estimator's shipped
# coefficients (prediction = (PHASE_OVERHEAD + Σ TOKEN_WEIGHTS[kind, new]) × 1.3):
#   implementation/low, one new .py:  predicted 3424, true median  250 + 1350 = 1600  (×0.47)
#   implementation/medium, one .py:   predicted 4128, true median  700 + 1350 = 2050  (×0.50)
#   tests/low, one test file:         predicted 3009, true median  700 + 1700 = 2400  (×0.80)
#   tests/medium, test + conftest:    predicted 6890, true median 1600 + 3400 = 5000  (×0.73)
#   docs/low, one .md:                predicted 2600, true median 1500 + 1300 = 2800  (×1.08, tail truncates)
#   docs/medium, one .md:             predicted 3900, true median 2600 + 1300 = 3900, wider spread
# ==================================================================================================
SIM_DISTRIBUTION: dict[str, object] = {
    # Fixed, per-phase part of the true output length, by canonical (category, complexity).
    "phase_base": {
        ("implementation", "low"): 250,
        ("implementation", "medium"): 700,
        ("implementation", "high"): 2600,
        ("tests", "low"): 700,
        ("tests", "medium"): 1600,
        ("tests", "high"): 3000,
        ("docs", "low"): 1500,
        ("docs", "medium"): 2600,
        ("docs", "high"): 3800,
        ("refactoring", "low"): 1800,
        ("refactoring", "medium"): 2600,
        ("refactoring", "high"): 4200,
        ("configuration", "low"): 500,
        ("configuration", "medium"): 1000,
        ("configuration", "high"): 1800,
        ("integration", "low"): 2200,
        ("integration", "medium"): 3200,
        ("integration", "high"): 5000,
        ("backend", "low"): 1500,
        ("backend", "medium"): 2400,
        ("backend", "high"): 4200,
        ("frontend", "low"): 2000,
        ("frontend", "medium"): 3000,
        ("frontend", "high"): 4800,
    },
    "default_phase_base": 1500,
    # True marginal length per deliverable, by kind (token_estimator.deliverable_kind).
    "per_deliverable": {
        "backend": 1350,
        "test": 1700,
        "doc": 1300,
        "config": 450,
        "frontend": 2200,
        "database": 900,
    },
    "default_per_deliverable": 1000,
    # Spread of the phase-level draw (log scale), by canonical category; Student-t with tail_df degrees
    # of freedom, so a few phases come out 2-4x their median.
    "sigma": {"implementation": 0.30, "tests": 0.30, "docs": 0.35},
    "default_sigma": 0.35,
    "tail_df": 4.0,
    # Attempt-to-attempt noise (log scale): a retry of the same phase writes about as much again.
    "attempt_sigma": 0.08,
    "min_tokens": 40,
}

MARKERS = ("truncate", "truncate-once", "boundary", "auth-error", "unavailable", "invalid-output", "missing-file")
_MARKER = re.compile(r"\[sim:([a-z\-]+)\]")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _table(name: str) -> dict:  # type: ignore[type-arg]
    value = SIM_DISTRIBUTION[name]
    assert isinstance(value, dict)
    return value


@dataclass(frozen=True)
class GroupLaw:
    """Changes to the simulated law of one canonical (category, complexity) group; the defaults change nothing."""

    sigma_scale: float = 1.0  # multiplies the category's spread (1.5: a group 1.5x as spread out)
    tail_df: float | None = None  # the Student-t degrees of freedom (None: SIM_DISTRIBUTION's; 2: a heavier tail)
    median_scale: float = 1.0  # multiplies the median (a drifting group gets a new scale each week)


@dataclass(frozen=True)
class PhaseLaw:
    """The law one phase's output length is drawn from: median · exp(sigma · T_df + N(0, attempt_sigma²))."""

    median: float
    sigma: float
    df: float
    attempt_sigma: float
    min_tokens: int


def phase_law(
    category: str | None, complexity: str | None, deliverables: tuple[str, ...] | list[str],
    laws: Mapping[tuple[str, str], GroupLaw] | None = None,
) -> PhaseLaw:
    """The law ``draw_length`` draws this phase's length from (``laws``: per-group changes, see ``GroupLaw``)."""
    change = (laws or {}).get((canonical_category(category), canonical_complexity(complexity)), GroupLaw())
    sigma = float(_table("sigma").get(canonical_category(category), SIM_DISTRIBUTION["default_sigma"]))
    df = float(SIM_DISTRIBUTION["tail_df"] if change.tail_df is None else change.tail_df)  # type: ignore[arg-type]
    return PhaseLaw(
        median=true_median(category, complexity, deliverables) * change.median_scale,
        sigma=sigma * change.sigma_scale,
        df=df,
        attempt_sigma=float(SIM_DISTRIBUTION["attempt_sigma"]),  # type: ignore[arg-type]
        min_tokens=int(SIM_DISTRIBUTION["min_tokens"]),  # type: ignore[call-overload]
    )


def true_median(category: str | None, complexity: str | None, deliverables: tuple[str, ...] | list[str]) -> float:
    """The median output length the simulator draws around (no noise)."""
    cat = canonical_category(category)
    cx = canonical_complexity(complexity)
    base = _table("phase_base").get((cat, cx), SIM_DISTRIBUTION["default_phase_base"])
    per = _table("per_deliverable")
    marginal = sum(
        per.get(deliverable_kind(deliverable_path(d), cat), SIM_DISTRIBUTION["default_per_deliverable"])
        for d in deliverables
    )
    return float(base) + float(marginal)


def draw_length(
    seed: int,
    run_id: str | None,
    phase_id: str | None,
    attempt_index: int,
    call_index: int,
    category: str | None,
    complexity: str | None,
    deliverables: tuple[str, ...] | list[str],
    laws: Mapping[tuple[str, str], GroupLaw] | None = None,
) -> int:
    """Deterministic heavy-tailed draw of the true output length for one call (from ``phase_law``)."""
    law = phase_law(category, complexity, deliverables, laws)
    phase_rng = _rng(seed, run_id, phase_id)
    z = phase_rng.gauss(0.0, 1.0)
    chi2 = phase_rng.gammavariate(law.df / 2.0, 2.0)
    t = z / math.sqrt(max(chi2, 1e-9) / law.df)
    attempt_rng = _rng(seed, run_id, phase_id, attempt_index, call_index)
    noise = attempt_rng.gauss(0.0, law.attempt_sigma)
    length = law.median * math.exp(law.sigma * t + noise)
    return max(law.min_tokens, int(round(length)))


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


class SimulatedProvider:
    """An ``LLMProvider`` that writes plausible files of a drawn length. Labelled ``simulated`` everywhere."""

    name = PROVIDER_NAME
    max_output_tokens = 64000

    def __init__(
        self,
        *,
        seed: int = 1234,
        model: str | None = None,
        latency_seconds: float = 0.0,
        force: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        laws: Mapping[tuple[str, str], GroupLaw] | None = None,
    ) -> None:
        if force is not None and force not in MARKERS:
            raise ValueError(f"unknown simulated force mode {force!r}; one of {', '.join(MARKERS)}")
        self.seed = seed
        self.model = model or DEFAULT_MODEL
        self.latency_seconds = latency_seconds
        self.force = force
        self._sleep = sleep
        self.laws = dict(laws or {})

    def _markers(self, request: LLMRequest) -> set[str]:
        found = set(_MARKER.findall(request.hints.description))
        if self.force:
            found.add(self.force)
        return found

    def complete(self, request: LLMRequest) -> LLMResponse:
        start = time.monotonic()
        hints = request.hints
        markers = self._markers(request)
        if self.latency_seconds > 0:
            self._sleep(self.latency_seconds)
        where = f"{hints.run_id}/{hints.phase_id} attempt {hints.attempt_index}"
        if "boundary" in markers:
            raise LLMBoundaryError(f"simulated: prompt is too long for the context window ({where})",
                                   provider=PROVIDER_NAME, status_code=400)
        if "auth-error" in markers:
            raise ProviderAuthError(f"simulated HTTP 401: authentication failed ({where})",
                                    provider=PROVIDER_NAME, status_code=401)
        if "unavailable" in markers:
            raise ProviderTransientError(f"simulated HTTP 529: overloaded ({where})",
                                         provider=PROVIDER_NAME, status_code=529)

        drawn = draw_length(self.seed, hints.run_id, hints.phase_id, hints.attempt_index, hints.call_index,
                            hints.category, hints.complexity, hints.deliverables, self.laws)
        if "truncate" in markers or ("truncate-once" in markers and hints.attempt_index == 0):
            drawn = max(drawn, 2 * request.max_tokens + 100)
        elif "truncate-once" in markers:
            drawn = min(drawn, max(1, int(0.8 * request.max_tokens)))
        # Only text up to the cap is ever returned: a far-tail draw (a t tail reaches 10^4× the median) must not
        # be written out in full first (it took gigabytes).
        drawn = min(drawn, 2 * request.max_tokens + 100)

        deliverables = list(hints.deliverables)
        if "missing-file" in markers and deliverables:
            deliverables = deliverables[:-1]
        text = render_files(
            _contents(deliverables, drawn * CHARS_PER_TOKEN, hints.description, hints.category or "",
                      broken="invalid-output" in markers,
                      tag=f"{hints.run_id}/{hints.phase_id}#{hints.attempt_index}")
        )
        stop_reason = "end_turn"
        cap_chars = request.max_tokens * CHARS_PER_TOKEN
        if len(text) > cap_chars:
            text = text[:cap_chars]
            stop_reason = "max_tokens"
        output_tokens = min(count_tokens(text), request.max_tokens)
        input_tokens = count_tokens(request.system) + count_tokens(request.prompt)
        return LLMResponse(
            text=text,
            provider=PROVIDER_NAME,
            model=request.model or self.model,
            max_tokens=request.max_tokens,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
            reasoning_tokens=0,
            cached_tokens=0,
            stop_reason=stop_reason,
            finish_reason=normalise_finish_reason(stop_reason),
            truncated=is_truncated(stop_reason, output_tokens, request.max_tokens),
            latency_seconds=time.monotonic() - start,
        )


# --------------------------------------------------------------------------------------------------
# File contents of a given size
# --------------------------------------------------------------------------------------------------

_IDENT = re.compile(r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b")
_WORDS = (
    "the helper keeps inputs unchanged unless a rule applies and returns a new value so callers can "
    "chain calls without surprises; edge cases such as empty input and unicode text are handled"
).split()


def _names(description: str, path: str) -> list[str]:
    stem = PurePosixPath(path).stem
    names = [n for n in _IDENT.findall(description.lower()) if n != stem and not n.endswith(("_py", "_md"))]
    seen: list[str] = []
    for name in names:
        if name not in seen and not name.startswith("test_"):
            seen.append(name)
    return seen[:8] or [f"{re.sub(r'[^a-z0-9_]', '_', stem.lower()).strip('_') or 'item'}_value"]


def _contents(
    deliverables: list[str], total_chars: int, description: str, category: str, *, broken: bool, tag: str
) -> list[tuple[str, str]]:
    """(path, content) per deliverable, sharing ``total_chars`` in proportion to the kinds' weights."""
    if not deliverables:
        return []
    cat = canonical_category(category)
    per = _table("per_deliverable")
    paths = [deliverable_path(d) for d in deliverables]
    weights = [float(per.get(deliverable_kind(p, cat), 1000)) for p in paths]
    header_chars = sum(block_overhead(p) for p in paths)
    budget = max(0, total_chars - header_chars)
    files = []
    for path, weight in zip(paths, weights, strict=True):
        share = int(budget * weight / sum(weights))
        files.append((path, file_content(path, share, description, tag=tag, broken=broken)))
    return files


def file_content(path: str, target_chars: int, description: str, *, tag: str = "", broken: bool = False) -> str:
    """Content for ``path`` of exactly ``target_chars`` characters when that is above the minimum."""
    suffix = PurePosixPath(path).suffix.lower()
    name = PurePosixPath(path).name.lower()
    if suffix in (".py", ".pyi"):
        is_test = name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
        text = _python(path, target_chars, description, tag, test=is_test)
        return text.replace("    return", "    return (", 1) if broken else text
    if suffix in (".md", ".rst", ".txt"):
        return _markdown(path, target_chars, description, tag)
    if suffix == ".json":
        return _json(path, target_chars, tag)
    return _hash_commented(path, target_chars, tag)


def _pad_comment(text: str, target_chars: int, prefix: str = "# ") -> str:
    """Append comment lines of filler words until the text is exactly ``target_chars`` long."""
    out = [text]
    length = len(text)
    i = 0
    while length < target_chars:
        room = target_chars - length
        if room <= len(prefix) + 1:
            out.append("\n" * room)
            break
        words = []
        line_len = len(prefix)
        while line_len < min(88, room - 1):
            word = _WORDS[i % len(_WORDS)]
            i += 1
            words.append(word)
            line_len += len(word) + 1
        line = (prefix + " ".join(words))[: room - 1] + "\n"
        out.append(line)
        length += len(line)
    return "".join(out)


def _python(path: str, target_chars: int, description: str, tag: str, *, test: bool) -> str:
    names = _names(description, path)
    lines = [f'"""{PurePosixPath(path).name}: written by the simulated provider ({tag})."""', "",
             "from __future__ import annotations", "", ""]
    if test:
        for n, name in enumerate(names):
            lines += [f"def test_{name}() -> None:", f'    """{name} behaves on a simple input."""',
                      f"    assert {n} + 1 == {n + 1}", "", ""]
    else:
        for name in names:
            lines += [f"def {name}(value: object) -> object:", f'    """{name}: returns its input unchanged."""',
                      "    return value", "", ""]
    text = "\n".join(lines) + "\n"
    k = 0
    while len(text) + 140 < target_chars:
        fn = (f"def {'test_case' if test else '_helper'}_{k:04d}(x: int = {k}) -> {'None' if test else 'int'}:\n"
              f'    """Case {k}: small arithmetic the simulated builder pads with."""\n'
              + (f"    assert x + 1 == {k + 1}\n\n\n" if test else f"    return x * 2 + {k}\n\n\n"))
        text += fn
        k += 1
    return _pad_comment(text, target_chars)


def _markdown(path: str, target_chars: int, description: str, tag: str) -> str:
    title = PurePosixPath(path).stem.replace("_", " ").title()
    text = f"# {title}\n\n_Written by the simulated provider ({tag})._\n\n"
    section = 1
    while len(text) + 200 < target_chars:
        text += (f"## Section {section}\n\n- {' '.join(_WORDS[:12])}.\n- {' '.join(_WORDS[12:24])}.\n\n"
                 f"```python\nresult = example_{section}(value)\n```\n\n")
        section += 1
    return _pad_comment(text, target_chars, prefix="")


def _json(path: str, target_chars: int, tag: str) -> str:
    doc: dict[str, object] = {"file": path, "generated_by": f"simulated ({tag})", "padding": ""}
    base = len(json.dumps(doc, indent=2)) + 1
    doc["padding"] = "x" * max(0, target_chars - base)
    return json.dumps(doc, indent=2) + "\n"


def _hash_commented(path: str, target_chars: int, tag: str) -> str:
    return _pad_comment(f"# {path}: written by the simulated provider ({tag})\n", target_chars)
