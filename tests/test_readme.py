"""The README starts with its two commands, and CI runs the README's test command verbatim."""

from __future__ import annotations

import re

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_the_main_job_and_the_tests() -> None:
    run, test = readme_commands()
    assert run.strip().endswith("llmnas search quickstart")
    assert test.strip().endswith("pytest -q")
    head = (REPO / "README.md").read_text().split("---")[0]
    assert run in head and test in head


def test_ci_runs_the_readme_test_command() -> None:
    _, test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert test.strip() in ci.splitlines()
    assert "set -euo pipefail" in ci  # pytest's exit code 5 (no tests collected) fails the run
