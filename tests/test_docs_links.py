"""Every relative link in the repository's Markdown resolves to a file of the repository.

The results page links each score to its run's ``config.yaml`` under ``results/``: a run
directory left out of git (an ignore pattern, a forgotten ``git add``) breaks the claim in a
fresh clone, which is what this test runs in on CI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [REPO / "README.md", *REPO.glob("docs/**/*.md"), *REPO.glob("results/**/*.md")],
    key=str,
)
# ](target) or ](target "title"); code spans and fenced blocks are dropped first
LINK = re.compile(r"\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|#)")


def targets(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [m["target"] for m in LINK.finditer(text) if not EXTERNAL.match(m["target"])]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    missing = [t for t in targets(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{len(missing)} broken links in {page.relative_to(REPO)}: {missing[:5]}"


def test_the_results_page_links_every_score_to_a_committed_config():
    page = REPO / "docs" / "results.md"
    configs = [t for t in targets(page) if t.endswith("config.yaml")]
    assert len(configs) >= 10  # one per seed at least
