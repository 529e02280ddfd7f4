"""Every relative link and repository path named in README.md and docs/*.md exists (issue #31).

Checked: Markdown links and images `[..](path)` (relative to the page; http(s), mailto
and `#anchor` links skipped) and, inside backticks (inline code and fenced blocks),
every path whose first component is a tracked top-level entry of the repository
(`configs/...`, `kd_jax/...`, `main.py`, ...): output folders such as `runs/...` are not
repository paths and are left alone. Paths with placeholders (`<pair>`, `$VAR`, `{x}`,
`*`, `...`) are skipped; a config's `:argument` and a test's `::name` are cut off.
"""
import re
import subprocess

import pytest

from tests import docs_markdown

ROOT = docs_markdown.ROOT
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_PLACEHOLDER = re.compile(r"[<>$*{}…]|\.\.\.|\[|\]")
_TOKEN_SPLIT = re.compile(r"[\s=,;()'\"|]+")
_MODULE = re.compile(r"(?:^|\s)-m\s+([\w.]+)")


def _tracked_top_level():
  try:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout: the tracked top-level entries are unknown")
  return {name.split("/")[0] for name in names}


def _code_spans(path):
  """(line number, code) of inline code spans outside fences and of fenced-block lines."""
  fenced = set()
  for first_line, _, text, _ in docs_markdown.code_blocks(path):
    for offset, line in enumerate(text.splitlines()):
      fenced.add(first_line + offset)
      yield first_line + offset, line
  in_fence = False
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if line.strip().startswith(("```", "~~~")):
      in_fence = not in_fence
      continue
    if in_fence or number in fenced:
      continue
    for match in _INLINE_CODE.finditer(line):
      yield number, match.group(2)


def _repository_paths(code, top_level):
  """Tokens of `code` that name a path under one of the top-level entries."""
  for token in _TOKEN_SPLIT.split(code):
    token = token.split("::")[0].strip("`").rstrip(".:")
    if ":" in token:
      token = token.split(":")[0]  # configs/cifar_kd.py:res32x4_res8x4
    if not token or _PLACEHOLDER.search(token) or token.startswith(("-", "/", "~")):
      continue
    if token.startswith("./"):
      token = token[2:]
    if token.split("/")[0] in top_level:
      yield token.rstrip("/")
  for module in _MODULE.findall(code):  # python -m kd_jax.tools.summarize
    if module.split(".")[0] in top_level:
      path = module.replace(".", "/")
      yield path if (ROOT / path).is_dir() else path + ".py"


def _links(path):
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    for match in _LINK.finditer(line):
      target = match.group(1)
      if target.startswith(("http://", "https://", "mailto:", "#")) or _PLACEHOLDER.search(target):
        continue
      yield number, target.split("#")[0]


def _broken(path, top_level):
  """'page:line: what' for each link or repository path of the page that does not exist."""
  name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
  broken = []
  for number, target in _links(path):
    if target and not (path.parent / target).exists():
      broken.append((number, f"{name}:{number}: link ({target})"))
  for number, code in _code_spans(path):
    for path_name in _repository_paths(code, top_level):
      if not (ROOT / path_name).exists():
        broken.append((number, f"{name}:{number}: path `{path_name}`"))
  return [message for _, message in sorted(broken)]


@pytest.mark.parametrize("path", docs_markdown.markdown_files(),
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_links_and_paths_exist(path):
  broken = _broken(path, _tracked_top_level())
  assert not broken, "missing:\n" + "\n".join(broken)


def test_the_check_sees_paths():
  """The parser finds the paths it should (a check that finds nothing would always pass)."""
  top_level = {"configs", "kd_jax", "main.py"}
  code = ("python main.py --config=configs/cifar_kd.py:smoke --workdir=runs/kd kd_jax/losses/ "
          "&& python -m kd_jax.tools.summarize runs/kd")
  assert list(_repository_paths(code, top_level)) == [
      "main.py", "configs/cifar_kd.py", "kd_jax/losses", "kd_jax/tools/summarize.py"]
  assert list(_repository_paths("bash .ci/run", {".ci"})) == [".ci/run"]
  assert not list(_repository_paths("configs/cifar_<method>.py $CONFIG kd_jax.losses",
                                    top_level))


def test_a_missing_link_or_path_is_reported(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("See [the notes](notes.md), [home](https://x.org) and [top](#top).\n"
                  "Run `python main.py --config=configs/no_such_config.py`.\n"
                  "```\nls kd_jax/losses/no_such_module.py runs/kd\n```\n")
  assert _broken(page, {"configs", "kd_jax", "main.py"}) == [
      "page.md:1: link (notes.md)", "page.md:2: path `configs/no_such_config.py`",
      "page.md:4: path `kd_jax/losses/no_such_module.py`"]
