"""Reading README.md and docs/*.md for the documentation tests: code blocks and links."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNNABLE_MARK = "<!-- runnable -->"
_FENCE = re.compile(r"^(\s*)(```|~~~)(.*)$")


def markdown_files():
  """README.md and every docs/*.md, in a fixed order."""
  return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def code_blocks(path):
  """(first line number, info string, text, marked runnable) of each fenced block."""
  lines = path.read_text(encoding="utf-8").splitlines()
  blocks, index = [], 0
  while index < len(lines):
    opening = _FENCE.match(lines[index])
    if not opening:
      index += 1
      continue
    fence, info, start = opening.group(2), opening.group(3).strip(), index + 1
    end = start
    while end < len(lines) and not lines[end].strip().startswith(fence):
      end += 1
    marked = any(lines[i].strip() == RUNNABLE_MARK for i in range(max(0, index - 2), index))
    blocks.append((start + 1, info, "\n".join(lines[start:end]) + "\n", marked))
    index = end + 1
  return blocks
