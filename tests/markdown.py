"""Reading the repository's Markdown pages for the tests that keep them true: which pages there
are, their ``##`` sections, their fenced code blocks, their links and the anchors GitHub gives
their headings."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folders that hold no page of the repository (a checkout without git: the walk skips them)
NOT_PAGES = {".git", ".venv", "results", ".pytest_cache", ".ruff_cache", "sepid.egg-info"}


def markdown_files():
    """Every Markdown file of the repository, relative to its root: what git tracks plus new files
    it does not ignore (so a page is checked before its first commit)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.md"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (FileNotFoundError, subprocess.CalledProcessError):  # no git, or not a checkout
        listed = [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*.md")
            if not NOT_PAGES & set(p.relative_to(ROOT).parts)
        ]
    return sorted(p for p in set(listed) if (ROOT / p).is_file())


def prose_lines(text):
    """(line, inside a fenced code block) for each line of a Markdown text."""
    fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            yield line, True
        else:
            yield line, fenced


def sections(page):
    """{"## heading": the section's text} of a page (relative to the root), each section up to the
    next ``#`` or ``##`` heading; headings inside code blocks are not headings."""
    out, heading, lines = {}, None, []
    for line, fenced in prose_lines((ROOT / page).read_text(encoding="utf-8")):
        if not fenced and re.match(r"#{1,2} ", line):
            if heading:
                out[heading] = "\n".join(lines)
            heading, lines = (line if line.startswith("## ") else None), []
        lines.append(line)
    if heading:
        out[heading] = "\n".join(lines)
    return out


def section(page, heading):
    """The text of one ``## heading`` of a page; a clear error when the page lacks it."""
    found = sections(page)
    if heading not in found:
        raise AssertionError(f"{page} has no section {heading!r} (it has {sorted(found)})")
    return found[heading]


def code_blocks(text, language="python"):
    """The fenced ```<language> blocks of a Markdown text."""
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def anchors(text):
    """The anchors GitHub gives the headings of a Markdown text: lower case, punctuation other
    than ``-`` and ``_`` dropped, spaces as ``-``; a repeated heading gets ``-1``, ``-2``..."""
    seen, out = {}, set()
    for line, fenced in prose_lines(text):
        match = None if fenced else re.match(r"#{1,6} (.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(text):
    """(line number, target) of every inline link ``[text](target)`` outside code; the text of
    inline code spans is left out first (a link's text may be one)."""
    out = []
    for number, (line, fenced) in enumerate(prose_lines(text), start=1):
        if not fenced:
            line = re.sub(r"`[^`]*`", "", line)
            out += [(number, target) for target in re.findall(r"\]\(([^)\s]+)\)", line)]
    return out
