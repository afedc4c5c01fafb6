"""The proposal as the publisher sees it: validated changes, their identity hash, and the PR marker.

The hash is what lets the bot recognise a proposal it already made (and a human already closed): it is
computed from the changes alone (table, key, old, new), never from timestamps, so re-running the same
calibration on the same data gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from autopack.calibration.result import Metadata, ProposedChange
from autopack.errors import InputError

Number = int | float

#: Branch the bot owns in the target repository (one branch, one open PR at a time).
BOT_BRANCH = "autopack/calibrate-token-estimator"
#: The file the proposal edits, relative to the target repository's root.
ESTIMATOR_PATH = "autopack/token_estimator.py"
#: Labels put on every calibration PR.
PR_LABELS = ("calibration", "needs-review")

#: Relative tolerance under which a proposed value counts as the same as one a human already declined.
MATERIAL_TOLERANCE = 0.10

_MARKER_RE = re.compile(r"<!--\s*autopack-calibration-pr\s+proposal=([0-9a-f]{64})\s*-->")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Change:
    """One coefficient entry to set: ``TABLE[key] = new`` where the file currently holds ``old``."""

    coefficient: str
    key: tuple[str, str]
    old: Number | None
    new: Number
    #: the calibration result's entry it came from (its group, evidence and verdict); None when given bare
    source: ProposedChange | None = field(default=None, compare=False, hash=False)

    @property
    def group(self) -> tuple[str, str] | None:
        """The (category, complexity) group the change belongs to, as the calibration says (None: shared)."""
        return self.source.group if self.source is not None else None

    @property
    def label(self) -> str:
        return f"{self.coefficient}[{self.key[0]!r}, {self.key[1]!r}]"


def _number(value: object, what: str, *, allow_none: bool) -> Number | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"proposed change: {what} must be a finite number, got {value!r}")
    return value


def parse_changes(raw: object) -> list[Change]:
    """Validate ``proposed_changes`` into ``Change`` objects: the result's ``ProposedChange`` entries, or plain
    ``{coefficient, key, old, new}`` objects (``apply_proposal``'s input as an editor of the estimator file)."""
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise InputError("calibration JSON: proposed_changes must be a list")
    changes: list[Change] = []
    seen: set[tuple[str, tuple[str, str]]] = set()
    for index, item in enumerate(raw):
        if isinstance(item, Change):
            change = item
        elif isinstance(item, ProposedChange):
            change = Change(item.coefficient, item.key, item.old, item.new, item)
        else:
            if not isinstance(item, Mapping):
                raise InputError(f"proposed_changes[{index}] must be an object")
            coefficient = item.get("coefficient")
            if not isinstance(coefficient, str) or not _IDENTIFIER.match(coefficient):
                raise InputError(f"proposed_changes[{index}].coefficient must be a table name, got {coefficient!r}")
            key = item.get("key")
            if (
                not isinstance(key, Sequence)
                or isinstance(key, (str, bytes))
                or len(key) != 2
                or not all(isinstance(k, str) for k in key)
            ):
                raise InputError(f"proposed_changes[{index}].key must be two strings, got {key!r}")
            old = _number(item.get("old"), f"proposed_changes[{index}].old", allow_none=True)
            new = _number(item.get("new"), f"proposed_changes[{index}].new", allow_none=False)
            assert new is not None
            change = Change(coefficient, (key[0], key[1]), old, new)
        identity = (change.coefficient, change.key)
        if identity in seen:
            raise InputError(f"proposed_changes: {change.label} appears twice")
        seen.add(identity)
        changes.append(change)
    if not changes:
        raise InputError("calibration JSON: proposed_changes is empty; there is nothing to propose")
    return changes


def proposal_hash(changes: Sequence[Change]) -> str:
    """sha256 of the canonical (sorted, compact) JSON of the changes' table/key/old/new."""
    text = json.dumps(canonical_changes(changes), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_changes(changes: Sequence[Change]) -> list[dict[str, Any]]:
    """The changes as stored and hashed: ``[{coefficient, key, old, new}]`` sorted by table and key."""
    return sorted(
        ({"coefficient": c.coefficient, "key": list(c.key), "old": c.old, "new": c.new} for c in changes),
        key=lambda d: (d["coefficient"], d["key"]),
    )


def material_difference(proposal: Sequence[Change], declined: Sequence[Change],
                        tolerance: float = MATERIAL_TOLERANCE) -> str | None:
    """Why ``proposal`` differs materially from a ``declined`` one, or None when it does not.

    Material means: another set of coefficient entries, or at least one entry whose new value differs
    from the declined one by more than ``tolerance`` relative to the larger of the two
    (|a − b| > tolerance · max(|a|, |b|)). The ``old`` values are ignored: a human who said no to
    setting a factor to 1.42 said no to 1.42, whatever the file held at the time.
    """
    ours = {(c.coefficient, c.key): c for c in proposal}
    theirs = {(c.coefficient, c.key): c for c in declined}
    if ours.keys() != theirs.keys():
        added = sorted(ours.keys() - theirs.keys())
        dropped = sorted(theirs.keys() - ours.keys())
        parts = ([f"adds {', '.join(ours[k].label for k in added)}"] if added else []) + (
            [f"drops {', '.join(theirs[k].label for k in dropped)}"] if dropped else [])
        return "another set of coefficients (" + "; ".join(parts) + ")"
    for key in sorted(ours):
        new, old = ours[key].new, theirs[key].new
        if abs(new - old) > tolerance * max(abs(new), abs(old)):
            return f"{ours[key].label} {old:g} → {new:g} (more than {tolerance:.0%} apart)"
    return None


def marker(digest: str) -> str:
    """The hidden HTML comment the bot puts in its PR body to find the PR and its proposal again."""
    return f"<!-- autopack-calibration-pr proposal={digest} -->"


def find_marker(body: str | None) -> str | None:
    """The proposal hash in a PR body's marker, or None when the body has no (intact) marker."""
    match = _MARKER_RE.search(body or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class CalibrationStamp:
    """What the edit writes into CALIBRATION_VERSION / CALIBRATION_DATE / CALIBRATION_SAMPLES."""

    version: str
    date: str
    samples: int


def calibration_stamp(metadata: Metadata | Mapping[str, Any]) -> CalibrationStamp:
    """Version ``autopack-cal-YYYYMMDD`` and date ``YYYY-MM-DD`` from ``generated_at``; samples = total_samples.

    ``metadata``: the result's, or a plain ``{generated_at, total_samples}`` object (``apply_proposal``'s input).
    """
    if isinstance(metadata, Metadata):
        return _stamp(metadata.generated_at, metadata.total_samples)
    if not isinstance(metadata, Mapping):
        raise InputError("calibration JSON: metadata must be an object")
    return _stamp(metadata.get("generated_at"), metadata.get("total_samples"))


def _stamp(generated: object, samples: object) -> CalibrationStamp:
    if not isinstance(generated, str):
        raise InputError("calibration JSON: metadata.generated_at is missing")
    try:
        when = datetime.fromisoformat(generated.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"calibration JSON: metadata.generated_at is not an ISO timestamp: {generated!r}") from None
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise InputError(f"calibration JSON: metadata.total_samples must be a non-negative integer, got {samples!r}")
    return CalibrationStamp(f"autopack-cal-{when:%Y%m%d}", f"{when:%Y-%m-%d}", samples)
