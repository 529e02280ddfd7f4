"""The one exception type for mistakes in what the user asked for.

main.py prints a UserError as a single line and exits with status 2, no traceback;
everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A bad config value, a missing or mismatched file, missing data: fixable by the user."""
