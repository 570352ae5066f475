"""The scaffolded medops.yaml points at documentation that exists."""

from __future__ import annotations

import re
from pathlib import Path

from medops.config import render_template

REPO = Path(__file__).resolve().parents[2]


def test_the_template_links_no_missing_documentation() -> None:
    text = render_template("chest-xray")
    assert "github.com/medops/medops" not in text  # a repository that does not exist
    # the docs ship in the source tree: no web page to go missing (example endpoints aside)
    for url in re.findall(r"https?://\S+", text):
        assert not any(w in url for w in ("github", "gitlab", "docs", "readthedocs")), url
    named = re.findall(r"\b(README\.md|docs/[\w./-]*)", text)
    assert named, "the template names no documentation"
    for doc in named:
        assert (REPO / doc).exists(), f"the template names {doc}, which is not in the repository"
    for section in re.findall(r'section "([^"]+)"', text):
        headings = [line.lstrip("#").strip() for line in
                    (REPO / "README.md").read_text().splitlines() if line.startswith("#")]
        assert section in headings, f"README.md has no section {section!r}"
