"""The builder's output format: plain-text file blocks, easy for a model to write and for us to parse.

    === FILE: examples/telemetry_utils/string_helper.py ===
    <the complete file content>
    === END FILE ===

One block per deliverable, complete contents (no diffs). Text outside blocks is ignored. A block that is
not closed (the output was cut) does not count as produced. A single Markdown code fence wrapped around a
block's content is removed, since models add one even when told not to. Chosen over JSON because a
truncated JSON document loses every file, and escaping source code in JSON costs tokens and errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_OPEN = re.compile(r"^=== FILE: (?P<path>.+?) ===\s*$")
_CLOSE = re.compile(r"^=== END FILE ===\s*$")

FORMAT_INSTRUCTIONS = """Output format (mandatory):
For every deliverable, write one block with the COMPLETE file content, exactly like this:
=== FILE: <relative/path/as/listed> ===
<file content>
=== END FILE ===
Write nothing else: no explanations, no diffs, no code fences around the blocks."""


def render_block(path: str, content: str) -> str:
    body = content if content.endswith("\n") or not content else content + "\n"
    return f"=== FILE: {path} ===\n{body}=== END FILE ===\n"


def block_overhead(path: str) -> int:
    """Characters a block adds around its content (content assumed to end with a newline)."""
    return len(render_block(path, "\n")) - 1


def render_files(files: Iterable[tuple[str, str]]) -> str:
    return "".join(render_block(path, content) for path, content in files)


@dataclass
class ParsedOutput:
    files: dict[str, str] = field(default_factory=dict)
    #: Path of a block that was opened but never closed (the output was cut inside it).
    unterminated: str | None = None
    #: Paths that appeared more than once (the last complete block wins).
    duplicates: list[str] = field(default_factory=list)


def _strip_fence(lines: list[str]) -> list[str]:
    if len(lines) >= 2 and lines[0].lstrip().startswith("```") and lines[-1].strip() == "```":
        return lines[1:-1]
    return lines


def parse_files(text: str) -> ParsedOutput:
    """Every complete ``=== FILE ===`` block in ``text``, by normalised relative path."""
    result = ParsedOutput()
    current: str | None = None
    buffer: list[str] = []
    for line in text.splitlines():
        if current is None:
            match = _OPEN.match(line)
            if match:
                current, buffer = match.group("path").strip(), []
            continue
        if _CLOSE.match(line):
            path = normalise_path(current)
            if path in result.files:
                result.duplicates.append(path)
            body = _strip_fence(buffer)
            result.files[path] = "\n".join(body) + ("\n" if body else "")
            current = None
            continue
        buffer.append(line)
    if current is not None:
        result.unterminated = normalise_path(current)
    return result


def normalise_path(path: str) -> str:
    """Forward slashes, no leading ``./`` (the form deliverables are compared in)."""
    cleaned = path.strip().strip("`'\"").replace("\\", "/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    return cleaned
