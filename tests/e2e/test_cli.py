"""The commands README tells users to run, run as users run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[2]
KUBETUNE = [sys.executable, "-m", "kubetune.cli"]


@pytest.mark.slow
@pytest.mark.e2e
def test_kubetune_run_example_end_to_end(tmp_path: Path) -> None:
    """`make demo` is `kubetune run examples/finetune.yaml`."""
    proc = subprocess.run(
        [*KUBETUNE, "run", "examples/finetune.yaml", "--workdir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Succeeded" in proc.stdout
    assert {p.name for p in (tmp_path / "run").rglob("*.gguf")} >= {"model-f16.gguf", "model-q4_k_m.gguf"}
    assert (tmp_path / "run" / "result.json").is_file()


def test_validate_accepts_every_example() -> None:
    assert main(["validate", *map(str, sorted((ROOT / "examples").glob("*.yaml")))]) == 0


def test_validate_and_run_name_the_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\n"
        "spec:\n  baseModel: {uri: builtin://tiny-llama}\n  dataset: {source: {uri: file://d.jsonl}}\n"
        "  lora: {r: 0}\n  training: {learningRate: 2.0e-4, epoch: 3}\n"
    )
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.lora.r" in err and "spec.training.epoch: Extra inputs are not permitted" in err
    assert main(["run", str(bad)]) == 2  # nothing is loaded or trained for a spec that cannot work
    assert "spec.lora.r" in capsys.readouterr().err


def test_run_missing_file_and_broken_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: FineTuneJob\nspec: [unclosed\n")
    assert main(["validate", str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
