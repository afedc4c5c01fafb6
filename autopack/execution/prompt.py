"""The builder prompt: goal, deliverables, read-only context and the output format.

Docs phases follow the seed's "Preventing Doc-Phase Truncation" practices: at most 10 context files and an
explicit output size cap in the instructions, so documentation stays concise instead of truncating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autopack.execution.workspace import ContextFile
from autopack.llm.builder_format import FORMAT_INSTRUCTIONS

DOCS_MAX_CONTEXT_FILES = 10
DEFAULT_MAX_CONTEXT_FILES = 40
DOCS_MAX_LINES_PER_FILE = 150

SYSTEM_PROMPT = (
    "You are the Builder of an automated software pipeline. You write complete, working files for the "
    "deliverables you are given, and nothing else. Python files must compile. Keep the code small, typed "
    "and documented; do not invent files that were not asked for."
)


@dataclass(frozen=True)
class BuilderPrompt:
    system: str
    user: str
    context_files: tuple[str, ...]
    omitted_context: tuple[str, ...]


def max_context_files(docs: bool) -> int:
    return DOCS_MAX_CONTEXT_FILES if docs else DEFAULT_MAX_CONTEXT_FILES


def build_prompt(
    *,
    phase_id: str,
    goal: str,
    deliverables: Sequence[str],
    context: Sequence[ContextFile],
    omitted_context: Sequence[str] = (),
    docs: bool = False,
    existing: Sequence[str] = (),
) -> BuilderPrompt:
    """The system and user messages for one builder call."""
    parts = [f"Phase: {phase_id}", "", "Goal:", goal.strip(), "", "Deliverables (write every one):"]
    for path in deliverables:
        note = " (exists: rewrite it completely)" if path in existing else " (new file)"
        parts.append(f"- {path}{note}")
    if docs:
        parts += [
            "",
            "Size limits (documentation): keep each document at most "
            f"{DOCS_MAX_LINES_PER_FILE} lines, bullet-style, with at most 1-2 short examples per topic. "
            "Be concise; do not pad or repeat the code.",
        ]
    if context:
        parts += ["", "Read-only context (do not rewrite these files):"]
        for item in context:
            if item.text is None:
                parts.append(f"--- {item.path} (not found in the workspace) ---")
                continue
            suffix = " (cut)" if item.truncated else ""
            parts += [f"--- {item.path}{suffix} ---", item.text.rstrip("\n"), f"--- end {item.path} ---"]
    if omitted_context:
        parts += ["", f"({len(omitted_context)} more context files omitted to keep the prompt focused.)"]
    parts += ["", FORMAT_INSTRUCTIONS]
    return BuilderPrompt(
        system=SYSTEM_PROMPT,
        user="\n".join(parts),
        context_files=tuple(c.path for c in context),
        omitted_context=tuple(omitted_context),
    )
