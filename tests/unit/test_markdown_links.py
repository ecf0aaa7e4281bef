"""Every relative link of every Markdown page of the repository (README.md, the recipes'
READMEs, docs/) points to a file or folder that exists, and its ``#anchor`` to a heading of that
page, so moving a page or renaming a heading cannot leave a dead link behind."""

import re
from pathlib import PurePosixPath

import pytest

from tests.markdown import ROOT, anchors, links, markdown_files

PAGES = markdown_files()


def test_the_pages_are_found():
    assert "README.md" in PAGES and "recipes/speaker/README.md" in PAGES
    assert any(p.startswith("docs/") for p in PAGES)


def test_the_anchor_rule_is_githubs():
    text = "# Set-up and the demo (one command, offline)\n## Results: `python run.py`\n## Results: `python run.py`\n"
    assert anchors(text) == {
        "set-up-and-the-demo-one-command-offline",
        "results-python-runpy",
        "results-python-runpy-1",
    }
    assert anchors("```bash\n# a comment, not a heading\n```\n") == set()


def test_a_dead_link_is_found(tmp_path):
    """The check below fails on a link to a missing file or heading (the test can fail)."""
    assert dead_links("[a](missing.md) [b](#nowhere) [c](README.md#tests)", "x.md") == [
        (1, "missing.md"),
        (1, "#nowhere"),
    ]


def dead_links(text, page):
    """(line, target) of each relative link of ``text`` (the page ``page``) that resolves to no
    file, or to no heading of the page it names."""
    dead = []
    for number, target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked here
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / PurePosixPath(page).parent / path).resolve() if path else ROOT / page
        if not file.exists():
            dead.append((number, target))
        elif anchor and (file.is_dir() or file.suffix != ".md"):
            dead.append((number, target))  # an anchor into something that is not a page
        elif anchor:
            own = text if not path else file.read_text(encoding="utf-8")
            if anchor not in anchors(own):
                dead.append((number, target))
    return dead


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert dead_links(text, page) == [], f"dead links in {page} (line, target)"
