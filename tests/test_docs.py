"""The documentation against the code it describes: README's configuration table, the helper scripts it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices

from autopack.config import Settings

REPO = Path(__file__).resolve().parents[1]
#: Variables read outside ``Settings`` that the table documents (``autopack.cli.app.TRACEBACK_ENV``).
READ_ELSEWHERE = {"AUTOPACK_TRACEBACK"}


def _readme_configuration_variables() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0]))
    return names


def _settings_variables() -> set[str]:
    names: set[str] = set()
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        names.update(str(choice) for choice in choices if isinstance(choice, str))
    return names


def test_the_readme_configuration_table_lists_every_setting_and_no_other() -> None:
    documented, read = _readme_configuration_variables(), _settings_variables() | READ_ELSEWHERE
    assert read - documented == set(), "settings missing from README's configuration table"
    assert documented - read == set(), "README's configuration table names variables autopack does not read"


def test_the_readme_configuration_table_states_each_settings_default() -> None:
    """Each row's default cell names the field's default (the ones a number or word can state)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = {name: line for line in text.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0])}
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        name = alias.choices[0] if isinstance(alias, AliasChoices) else alias
        default = info.default
        if isinstance(default, bool):
            default = int(default)
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        if default is None or default == "" or not isinstance(name, str):
            continue
        default_cell = rows[name].split(" | ")[1]
        assert f"`{default}`" in default_cell, f"{name}: default {default!r} not in {default_cell!r}"


@pytest.mark.parametrize("script", ["prefect_ui_screenshot.py", "params_table.py", "result_schema.py"])
def test_the_documented_helper_scripts_start_from_any_directory(script: str, tmp_path: Path) -> None:
    """``python scripts/<script>`` as the docs show it: no PYTHONPATH, another working directory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: {script}")


def test_python_dash_m_autopack_is_the_autopack_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "autopack", "drain", "-h"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: autopack drain [OPTIONS] COMMAND [ARGS]...")
    wrong = subprocess.run([sys.executable, "-m", "autopack", "nope"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr == "error: No such command 'nope' (see `autopack --help`)\n"
