"""The README's benchmark figures are the recorded results (benchmarks/results/),
rendered by benchmarks/readme_figures.py: a hand-edited figure fails CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "readme_figures.py"


def check(readme: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
                          capture_output=True, text=True, timeout=60)


def test_readme_figures_are_the_recorded_results():
    result = check(ROOT / "README.md")
    assert result.returncode == 0, result.stderr


def test_a_hand_edited_figure_is_caught(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- figures:blackhole -->\n(.*?)<!-- /figures:blackhole -->", text,
                      re.DOTALL)
    assert block is not None, "README.md has no blackhole figures block"
    edited = block.group(1).replace(" s |", "0 s |", 1)
    assert edited != block.group(1)
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(block.group(1), edited))
    result = check(readme)
    assert result.returncode == 1
    assert "blackhole" in result.stderr
