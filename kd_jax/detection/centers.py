"""Class centres of the detection ND term in the ND authors' file format.

Their `Detection/configs/Center/R101_emb.json` / `R50_emb.json` (written by
`RCNNKD.emb_fea_distribution`) is one JSON object {"<label>": [d floats], ...} with the
labels 0..K-1 foreground and K background as decimal strings, in any order; ND reads
`T_EMB[str(label)]`, so every label must be present.
"""
import json

import numpy as np

from kd_jax.errors import UserError


def read_authors_centers(path, num_labels, dim):
  """[num_labels, dim] float32 from an authors'-format JSON file (num_labels = K+1)."""
  where = f"class centres file {path} (config.method.centers_file)"
  try:
    with open(path) as f:
      table = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{where} not found") from None
  except (OSError, ValueError) as error:
    raise UserError(f"{where} is not readable JSON: {error}") from None
  if not isinstance(table, dict):
    raise UserError(f"{where} must hold one JSON object {{\"label\": [floats]}}")
  missing = [str(label) for label in range(num_labels) if str(label) not in table]
  if missing:
    raise UserError(f"{where} lacks labels {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''} of 0..{num_labels - 1}")
  extra = sorted(set(table) - {str(label) for label in range(num_labels)})
  if extra:
    raise UserError(f"{where} has labels {', '.join(extra[:5])} outside 0..{num_labels - 1}")
  rows = []
  for label in range(num_labels):
    row = table[str(label)]
    if not isinstance(row, list) or len(row) != dim:
      raise UserError(f"{where}: label {label} must be a list of {dim} numbers")
    rows.append(row)
  try:
    centers = np.asarray(rows, np.float32)
  except (TypeError, ValueError):
    raise UserError(f"{where}: centres must be numbers") from None
  if not np.all(np.isfinite(centers)):
    raise UserError(f"{where}: centres must be finite")
  return centers

