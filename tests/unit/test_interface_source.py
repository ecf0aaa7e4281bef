"""The exported interfaces' model code has one source (issue 21 part 3).

The speaker model code (masked WavLM, pooling head, chunked embedding) is written once, in the
``# >>> speaker model`` block of ``sepid/speaker/encoder.py``; the repository's
``pretrained_interfaces/speaker/custom_interface.py`` imports it between the same markers and the
export inlines the block there (and the joint export inlines that expanded speaker file), so an
exported folder carries the training code itself and no file of this repository. The round trips
(``tests/recipes/test_speaker_interface.py``, ``test_joint_interface.py``) load real exports.
"""

import ast
import builtins
import re
import symtable

import pytest

from pretrained_interfaces.folder import (
    INTERFACE_DIR,
    INTERFACE_FILE,
    JOINT_DIR,
    MODEL_SOURCE,
    joint_interface_source,
    marked_block,
    speaker_interface_source,
)

PROJECT_IMPORT = re.compile(r"^\s*(from|import) (pretrained_interfaces|sepid)\b", re.M)
REPO_SPEAKER = INTERFACE_DIR / INTERFACE_FILE


def block_of(text, name="speaker model"):
    found = marked_block(name).findall(text)
    assert len(found) == 1, f"{len(found)} `# >>> {name}` blocks"
    return found[0]


def unbound_names(code, filename):
    """Names some scope of ``code`` reads as globals that the module never binds (nor builtins
    hold): what would be a ``NameError`` once that line runs."""
    top = symtable.symtable(code, filename, "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used = set()

    def walk(table):
        for s in table.get_symbols():
            if s.is_referenced() and (table is top or s.is_global()):
                used.add(s.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - bound - set(dir(builtins))


def test_exported_speaker_interface_is_the_repository_file_with_the_training_block():
    source_block = block_of(MODEL_SOURCE.read_text(encoding="utf-8"))
    repo = REPO_SPEAKER.read_text(encoding="utf-8")
    exported = speaker_interface_source()
    assert block_of(exported) == source_block
    assert exported.replace(source_block, "") == repo.replace(block_of(repo), "")
    assert PROJECT_IMPORT.search(repo), "the repository's file imports the block from sepid"
    assert not PROJECT_IMPORT.search(exported)


@pytest.mark.parametrize("which", ["speaker", "joint"])
def test_exported_interfaces_are_standalone_python(which):
    """Every name the exported file reads is bound in it: the block's imports are there (at the
    top of the interface), not only in ``sepid/speaker/encoder.py``."""
    code = speaker_interface_source() if which == "speaker" else joint_interface_source()
    assert not PROJECT_IMPORT.search(code)
    assert unbound_names(code, INTERFACE_FILE) == set()
    assert code.count("class MaskedWavLMModel(") == 1 and code.count("def embed_in_chunks(") == 1


def test_a_name_the_interface_does_not_import_is_found():
    code = speaker_interface_source().replace("\nimport warnings", "\n", 1)
    assert unbound_names(code, INTERFACE_FILE) == {"warnings"}


def test_the_repository_file_imports_exactly_the_blocks_names():
    """The repository's interface and the exported one see the same names: the import between
    the markers lists every public top-level name the block defines, and no other."""
    block = ast.parse(block_of(MODEL_SOURCE.read_text(encoding="utf-8")))
    defined = set()
    for node in block.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    (imported,) = ast.parse(block_of(REPO_SPEAKER.read_text(encoding="utf-8"))).body
    assert isinstance(imported, ast.ImportFrom) and imported.module == "sepid.speaker.encoder"
    assert {a.name for a in imported.names} == {n for n in defined if not n.startswith("_")}
    assert {"MaskedWavLMModel", "SpeakerEmbeddingMixin", "embed_in_chunks"} <= defined


def test_the_joint_interface_inlines_the_expanded_speaker_interface():
    joint = joint_interface_source()
    assert speaker_interface_source() in joint
    assert "# >>> speaker interface" in (JOINT_DIR / INTERFACE_FILE).read_text(encoding="utf-8")
