"""The "Options" table of each recipe's README names keys of the recipe's YAML with the defaults
the YAML has (``required`` for a ``!PLACEHOLDER``), so the table cannot drift from the YAML."""

import re

import pytest

from tests.markdown import ROOT, section

RECIPES = ["recipes/speaker/README.md", "recipes/separation/README.md", "recipes/joint/README.md"]


def options(page):
    """(the YAML the table documents, [(key, default cell)]) of a README's "## Options"."""
    text = section(page, "## Options")
    yaml = re.search(r"Every top-level key of `([^`]+\.yaml)`", text).group(1)
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| .+ \|$", text, flags=re.M)
    return yaml, rows


def yaml_default(text, key):
    """The literal value of a top-level key of a YAML file's text (comment and ``!ref`` left out),
    or None when the file has no such key."""
    match = re.search(rf"^{key}:[ \t]*(.*?)(?:[ \t]+#.*)?$", text, flags=re.M)
    return None if match is None else match.group(1).removeprefix("!ref ").strip()


def test_the_reading_of_a_yaml_default():
    text = "a: 3  # three\nb: !ref results/<seed>\nc: !PLACEHOLDER\n  d: 1\n"
    assert [yaml_default(text, k) for k in "abcd"] == ["3", "results/<seed>", "!PLACEHOLDER", None]


@pytest.mark.parametrize("page", RECIPES)
def test_options_table_matches_the_yaml(page):
    yaml, rows = options(page)
    assert len(rows) >= 10, f"{page}: the Options table has {len(rows)} rows"
    text = (ROOT / yaml).read_text(encoding="utf-8")
    for key, cell in rows:
        default = yaml_default(text, key)
        assert default is not None, f"{page}: `{key}` is no top-level key of {yaml}"
        expected = "required" if default == "!PLACEHOLDER" else f"`{default}`"
        assert cell == expected, f"{page}: `{key}` defaults to {expected} in {yaml}, not {cell}"
