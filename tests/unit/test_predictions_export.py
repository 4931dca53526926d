"""`kubetune alerts` and `kubetune predictions export`: exit codes, and the pure transforms from
the gateway's prediction log to the trainer's chat and preference data."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.cli import main
from kubetune.serving.alerts import render_all


def test_alerts_check_passes_on_the_shipped_files() -> None:
    assert main(["alerts", "--check"]) == 0


def test_alerts_writes_then_check_fails_when_a_file_is_edited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", "--check", "--out", str(tmp_path)]) == 1  # nothing written yet
    assert main(["alerts", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_all())
    assert main(["alerts", "--check", "--out", str(tmp_path)]) == 0
    rules = tmp_path / "kubetune-rules.yaml"
    rules.write_text(rules.read_text() + "# hand edit\n")
    capsys.readouterr()
    assert main(["alerts", "--check", "--out", str(tmp_path)]) == 1
    assert "kubetune-rules.yaml" in capsys.readouterr().err
