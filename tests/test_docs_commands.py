"""The shell commands of README.md and docs/*.md (issue #31), checked without training.

- The README's two set-up commands are verbatim what users and CI run (the test command
  is a line of .ci/run).
- Every config named with an argument (`--config=configs/cifar_dkd.py:wrn40_2_wrn40_1`,
  `imagenet_deit.py:deit,regnety160_deitb` in a table, a sweep's `--configs` x `--pairs`)
  is a file of configs/ whose get_config accepts that argument.
- Every other shell block says, in the lines next to it, that it needs data or teachers,
  or that it runs offline (where a test runs it).
"""
import importlib.util
import re

import pytest

from tests import docs_markdown

ROOT = docs_markdown.ROOT
SETUP = (
    "pip install -e . && python main.py --config=configs/cifar_cskd.py:smoke "
    "--workdir=/tmp/kd_smoke",
    'pip install -e ".[test]" && python -m pytest -n auto --maxprocesses=4',
)
SHELL = ("bash", "sh", "shell", "console", "")
_CONFIG_ARG = re.compile(r"(?<![\w/])(?:configs/)?(\w+\.py)(?::([^\s`'\")|]*))?")
_SWEEP = re.compile(r"--configs=(\S+)")
_PAIRS = re.compile(r"--pairs=(\S+)")
_PLACEHOLDER = re.compile(r"[<>$*{}…]|\.\.\.")
_NOTE = re.compile(r"\bneeds?\b|\boffline\b", re.IGNORECASE)


def _code(path):
  """Fenced block texts and inline code spans of a page."""
  texts = [text for _, _, text, _ in docs_markdown.code_blocks(path)]
  in_fence = False
  for line in path.read_text(encoding="utf-8").splitlines():
    if line.strip().startswith(("```", "~~~")):
      in_fence = not in_fence
    elif not in_fence:
      texts += [match.group(2) for match in re.finditer(r"(`+)(.+?)\1", line)]
  return texts


def _config_uses(text):
  """(config file name, argument or None) named in `text`; placeholders left out."""
  uses = []
  text = text.replace("\\\n", " ")
  for match in _CONFIG_ARG.finditer(_SWEEP.sub("", text)):  # --configs: with --pairs below
    name, arg = match.group(1), match.group(2)
    file = ROOT / "configs" / name
    if (not file.is_file() or "def get_config" not in file.read_text(encoding="utf-8")
        or (arg and _PLACEHOLDER.search(arg))):  # cifar_common.py: a library, no config
      continue
    uses.append((name, (arg or "").rstrip(",.;") or None))
  for configs, pairs in zip(_SWEEP.findall(text), _PAIRS.findall(text)):
    for item in configs.split(","):  # FILE or FILE:VARIANT (kd_jax/tools/sweep.py)
      name, _, variant = item.split("/")[-1].partition(":")
      uses += [(name, f"{variant},{pair}" if variant else pair) for pair in pairs.split(",")]
  return uses


def _load(name):
  spec = importlib.util.spec_from_file_location(f"docs_config_{name[:-3]}",
                                                ROOT / "configs" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _all_config_uses():
  return sorted({use for path in docs_markdown.markdown_files() for text in _code(path)
                 for use in _config_uses(text)}, key=str)


def test_setup_commands_are_verbatim():
  blocks = [text for _, info, text, _ in docs_markdown.code_blocks(ROOT / "README.md")
            if info in SHELL]
  assert blocks and blocks[0].splitlines() == list(SETUP), "README's first block changed"
  ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
  assert SETUP[1] in ci_lines, ".ci/run no longer runs the README's test command verbatim"
  readme = (ROOT / "README.md").read_text(encoding="utf-8")
  assert readme.index(SETUP[0]) < 3000, "the set-up commands left the first screen"


def test_the_parser_finds_config_arguments():
  text = ("python main.py --config=configs/cifar_dkd.py:wrn40_2_wrn40_1 --seeds=0,1\n"
          "`imagenet_deit.py:deit,regnety160_deitb` `cifar_nd.py:<base>_nd,<pair>` "
          "`configs/cifar_kd.py` tests/test_docs_links.py::test_x\n"
          "sweep --configs=configs/cifar_kd.py,configs/cifar_nd.py:dkd_nd --pairs=smoke")
  assert _config_uses(text) == [
      ("cifar_dkd.py", "wrn40_2_wrn40_1"), ("imagenet_deit.py", "deit,regnety160_deitb"),
      ("cifar_kd.py", None), ("cifar_kd.py", "smoke"), ("cifar_nd.py", "dkd_nd,smoke")]


@pytest.mark.parametrize("name,arg", _all_config_uses(), ids=str)
def test_named_config_and_argument_exist(name, arg):
  module = _load(name)
  config = module.get_config() if arg is None else module.get_config(arg)
  assert config.method.name


def test_every_shell_block_is_tested_or_says_what_it_needs():
  unmarked = []
  for path in docs_markdown.markdown_files():
    lines = path.read_text(encoding="utf-8").splitlines()
    for first, info, text, _ in docs_markdown.code_blocks(path):
      if info not in SHELL or (path.name == "README.md" and text.splitlines() == list(SETUP)):
        continue
      end = first + len(text.splitlines())  # 1-based line of the closing fence
      near = lines[max(0, first - 5):first - 1] + lines[end:end + 2]
      if not any(_NOTE.search(line) for line in near):
        unmarked.append(f"{path.name}:{first}")
  assert not unmarked, "shell blocks without a needs/offline note: " + ", ".join(unmarked)
