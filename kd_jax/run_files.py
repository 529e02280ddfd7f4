"""Reading back what a run wrote (config.json, run.json, summary.json, metrics.jsonl, caches).

Disks, copies and interrupted jobs damage files: a damaged record of the run is a
UserError naming the file and what to do; what can be rebuilt (caches, the interrupted
last line of metrics.jsonl) is rebuilt with a warning instead. Writes go to a temporary
name and are renamed into place, so an interrupted write leaves the old file or none.
"""
import json
import os

from absl import logging
import numpy as np

from kd_jax.errors import UserError

OVERWRITE = "use --overwrite to start this run again, or a new --workdir"


def read_json(path, remedy=OVERWRITE):
  """The JSON object in `path`; UserError naming the file and `remedy` if it is damaged."""
  try:
    with open(path, "rb") as f:
      value = json.loads(f.read().decode("utf-8"))
  except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
    raise UserError(f"{path} is damaged ({_reason(error)}); {remedy}") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} is damaged (not a JSON object); {remedy}")
  return value


def fields(path, record, names, remedy=OVERWRITE):
  """`record` (read from `path`) has every one of `names`, or a UserError says which not."""
  missing = [name for name in names if name not in record]
  if missing:
    raise UserError(f"{path} is damaged (no {', '.join(missing)}); {remedy}")
  return record


def write_text(path, text):
  """Writes `text` to `path` atomically (a temporary file renamed into place)."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def _reason(error):
  if isinstance(error, UnicodeDecodeError):
    return "not UTF-8 text"
  if isinstance(error, json.JSONDecodeError):
    return "empty" if not error.doc.strip() else f"not JSON at line {error.lineno}"
  return str(error).splitlines()[0][:100]


def read_jsonl(path, remedy=OVERWRITE):
  """The records of a JSON-lines file. An interrupted last line (no newline: the writer
  was killed mid-write) is left out with a warning; a damaged line before it is an error."""
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line.decode("utf-8")))
    except (ValueError, UnicodeDecodeError) as error:
      if number == len(lines):  # no newline after it
        logging.warning("%s: left out its interrupted last line", path)
        continue
      raise UserError(f"{path} is damaged at line {number} ({_reason(error)}); {remedy}") from None
  return records


def repair_jsonl_tail(path):
  """Cuts an interrupted last line (bytes after the last newline) off `path` before
  appending to it, so the next record starts on a line of its own."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
      logging.warning("%s: removed an interrupted last line (%d bytes)", path, len(data) - keep)
      f.truncate(keep)


def load_cache(path):
  """The array cached at `path`, or None (with a warning) when it is damaged: it is then
  recomputed and written again."""
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as error:
    logging.warning("cache %s is damaged (%s): recomputing it", path, _reason(error))
    return None


def save_cache(path, value):
  """Writes an array cache atomically (np.save to a temporary name, then a rename)."""
  with open(path + ".tmp", "wb") as f:
    np.save(f, value)
  os.replace(path + ".tmp", path)
