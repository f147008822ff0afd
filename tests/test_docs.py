"""The README stays a five-minute read and the documentation site builds: `mkdocs build --strict` fails on a
broken link or anchor, a page missing from the navigation or a navigation entry without its page."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_documentation_site_builds_in_strict_mode(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "security" / "index.html").is_file()


def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    targets = [target for target in LINK.findall(text) if "://" not in target]
    assert targets, "the README links to the documentation"
    for target in targets:
        assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"
