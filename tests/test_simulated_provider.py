"""Simulated provider: deterministic, labelled, heavy-tailed, real file contents, truncates like a model."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from autopack.config import get_settings
from autopack.llm import LLMBoundaryError, ProviderAuthError, ProviderTransientError, get_provider
from autopack.llm.base import LLMRequest, TaskHints
from autopack.llm.builder_format import parse_files
from autopack.llm.simulated import (
    CHARS_PER_TOKEN,
    SIM_DISTRIBUTION,
    SimulatedProvider,
    count_tokens,
    draw_length,
    true_median,
)


def request(*deliverables: str, max_tokens: int = 64000, description: str = "helpers: capitalize_words, reverse_string",
            category: str = "implementation", complexity: str = "low", run_id: str = "r1", phase_id: str = "p1",
            attempt: int = 0) -> LLMRequest:
    return LLMRequest(
        system="system", prompt="prompt " * 50, max_tokens=max_tokens,
        hints=TaskHints(run_id=run_id, phase_id=phase_id, attempt_index=attempt, category=category,
                        complexity=complexity, deliverables=deliverables or ("pkg/string_helper.py",),
                        description=description),
    )


def test_same_seed_same_output() -> None:
    a = SimulatedProvider(seed=7).complete(request())
    b = SimulatedProvider(seed=7).complete(request())
    assert (a.text, a.output_tokens, a.input_tokens) == (b.text, b.output_tokens, b.input_tokens)


def test_other_seed_other_lengths() -> None:
    lengths = {SimulatedProvider(seed=s).complete(request()).output_tokens for s in range(8)}
    assert len(lengths) > 4


def test_every_response_is_labelled_simulated_with_an_exact_split() -> None:
    response = SimulatedProvider(seed=1).complete(request())
    assert response.provider == "simulated"
    assert response.model == "sim-builder-1"
    assert response.input_tokens and response.output_tokens
    assert response.total_tokens == response.input_tokens + response.output_tokens
    assert response.output_tokens == count_tokens(response.text)


def test_python_deliverables_compile_and_markdown_is_markdown() -> None:
    response = SimulatedProvider(seed=3).complete(
        request("pkg/string_helper.py", "pkg/test_string_helper.py", "docs/README.md", "conf/settings.json")
    )
    files = parse_files(response.text).files
    assert set(files) == {"pkg/string_helper.py", "pkg/test_string_helper.py", "docs/README.md", "conf/settings.json"}
    compile(files["pkg/string_helper.py"], "a.py", "exec")
    compile(files["pkg/test_string_helper.py"], "b.py", "exec")
    assert "def capitalize_words" in files["pkg/string_helper.py"]
    assert "def test_" in files["pkg/test_string_helper.py"]
    assert files["docs/README.md"].startswith("# ")
    json.loads(files["conf/settings.json"])


def test_text_is_padded_to_the_drawn_length() -> None:
    provider = SimulatedProvider(seed=11)
    req = request()
    drawn = draw_length(11, "r1", "p1", 0, 0, "implementation", "low", ("pkg/string_helper.py",))
    response = provider.complete(req)
    assert abs(response.output_tokens - drawn) <= 2
    assert response.stop_reason == "end_turn" and not response.truncated


def test_overlong_draw_is_cut_at_max_tokens() -> None:
    response = SimulatedProvider(seed=5).complete(request(max_tokens=100))
    assert response.truncated
    assert response.stop_reason == "max_tokens"
    assert response.finish_reason == "length"
    assert response.output_tokens == 100
    assert len(response.text) == 100 * CHARS_PER_TOKEN
    assert "pkg/string_helper.py" not in parse_files(response.text).files


def test_truncate_marker_truncates_every_attempt() -> None:
    provider = SimulatedProvider(seed=5)
    for attempt in (0, 1):
        response = provider.complete(request(description="x [sim:truncate]", max_tokens=9000, attempt=attempt))
        assert response.truncated and response.output_tokens == 9000


def test_truncate_once_marker_fits_on_the_retry() -> None:
    provider = SimulatedProvider(seed=5)
    first = provider.complete(request(description="x [sim:truncate-once]", max_tokens=4000, attempt=0))
    second = provider.complete(request(description="x [sim:truncate-once]", max_tokens=5000, attempt=1))
    assert first.truncated
    assert not second.truncated and second.output_tokens < 5000


def test_force_option_equals_the_marker() -> None:
    response = SimulatedProvider(seed=5, force="truncate").complete(request(max_tokens=8000))
    assert response.truncated


def test_unknown_force_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        SimulatedProvider(force="explode")


@pytest.mark.parametrize(("marker", "error"), [("boundary", LLMBoundaryError), ("auth-error", ProviderAuthError),
                                               ("unavailable", ProviderTransientError)])
def test_error_markers_raise_the_matching_error(marker: str, error: type) -> None:
    with pytest.raises(error) as info:
        SimulatedProvider(seed=1).complete(request(description=f"[sim:{marker}]"))
    assert info.value.provider == "simulated"


def test_invalid_output_marker_writes_python_that_does_not_compile() -> None:
    response = SimulatedProvider(seed=1).complete(request(description="[sim:invalid-output] capitalize_words"))
    source = parse_files(response.text).files["pkg/string_helper.py"]
    with pytest.raises(SyntaxError):
        compile(source, "a.py", "exec")


def test_missing_file_marker_omits_the_last_deliverable() -> None:
    response = SimulatedProvider(seed=1).complete(request("pkg/a.py", "pkg/b.py", description="[sim:missing-file]"))
    assert set(parse_files(response.text).files) == {"pkg/a.py"}


def test_latency_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_SIM_LATENCY_SECONDS", "0.25")
    monkeypatch.setenv("AUTOPACK_SIM_SEED", "99")
    slept: list[float] = []
    provider = get_provider(get_settings(), sleep=slept.append)
    assert isinstance(provider, SimulatedProvider) and provider.seed == 99
    provider.complete(request())
    assert slept == [0.25]


def test_default_latency_is_zero() -> None:
    slept: list[float] = []
    get_provider(get_settings(), sleep=slept.append).complete(request())
    assert slept == []


def _draws(category: str, complexity: str, deliverable: str, n: int = 300) -> list[int]:
    return [draw_length(1234, "dist", f"p{i}", 0, 0, category, complexity, (deliverable,)) for i in range(n)]


def test_true_lengths_differ_from_the_shipped_coefficients() -> None:
    # Shipped v5-step2 predictions: implementation/low one .py 3424, docs/low one .md 2600.
    impl = statistics.median(_draws("implementation", "low", "pkg/a.py"))
    docs = statistics.median(_draws("docs", "low", "docs/a.md"))
    assert impl < 0.6 * 3424
    assert docs > 2600


def test_lengths_have_a_heavier_tail_than_a_lognormal() -> None:
    draws = sorted(_draws("docs", "low", "docs/a.md", n=1000))
    median = statistics.median(draws)
    sigma = SIM_DISTRIBUTION["sigma"]["docs"]  # type: ignore[index]
    lognormal_p99 = math.exp(sigma * 2.326)
    assert draws[990] / median > 1.2 * lognormal_p99


def test_spellings_draw_from_the_same_group() -> None:
    assert true_median("testing", "MEDIUM", ("tests/test_a.py",)) == true_median("tests", "medium", ("tests/test_a.py",))


def test_true_median_grows_with_deliverables() -> None:
    medians = [true_median("implementation", "medium", tuple(f"pkg/m{i}.py" for i in range(n))) for n in range(1, 6)]
    assert medians == sorted(medians) and len(set(medians)) == 5


def test_distribution_table_names_every_parameter() -> None:
    assert {"phase_base", "per_deliverable", "sigma", "tail_df", "attempt_sigma", "min_tokens"} <= set(SIM_DISTRIBUTION)


def test_a_far_tail_draw_is_cut_without_writing_it_out() -> None:
    """A draw far above the cap (the t tail reaches 10^4× the median) costs no more than the cap's text."""
    import tracemalloc

    from autopack.llm.base import LLMRequest, TaskHints
    from autopack.llm.simulated import GroupLaw, SimulatedProvider

    law = {("docs", "low"): GroupLaw(median_scale=1e5)}  # a median of ~10^8 tokens
    hints = TaskHints(run_id="r", phase_id="p", attempt_index=0, call_index=0, category="docs", complexity="low",
                      deliverables=("README.md",), description="Write README.md.")
    tracemalloc.start()
    response = SimulatedProvider(seed=1, laws=law).complete(LLMRequest(system="s", prompt="p", max_tokens=1000,
                                                                        hints=hints))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert response.truncated and response.output_tokens == 1000
    assert peak < 10_000_000
