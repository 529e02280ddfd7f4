"""Runs the ```python blocks of README.md and docs/*.md marked `<!-- runnable -->`.

A signature change in kd_jax.losses (or anything a snippet uses) then fails here instead
of breaking the documentation silently (issue #31). Mark a block by putting the comment
on the line just before its opening fence (or one blank line above it).
"""
import pytest

from tests import docs_markdown

SNIPPETS = [(path, line, text)
            for path in docs_markdown.markdown_files()
            for line, info, text, marked in docs_markdown.code_blocks(path) if marked]


def test_the_loss_page_has_a_runnable_snippet():
  assert any(path.name == "losses.md" for path, _, _ in SNIPPETS)


def test_marked_blocks_are_python():
  for path in docs_markdown.markdown_files():
    for line, info, _, marked in docs_markdown.code_blocks(path):
      if marked:
        assert info.split()[:1] == ["python"], f"{path.name}:{line}: marked block is {info!r}"


@pytest.mark.parametrize("path,line,text", SNIPPETS,
                         ids=[f"{p.name}:{n}" for p, n, _ in SNIPPETS])
def test_snippet_runs(path, line, text):
  code = compile(text, f"{path.relative_to(docs_markdown.ROOT)}:{line}", "exec")
  exec(code, {"__name__": "__docs_snippet__"})  # pylint: disable=exec-used
