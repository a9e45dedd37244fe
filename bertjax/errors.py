"""The one exception type for bad user input.

`bertjax` commands catch `UserError` and print its message alone, so a wrong key,
a missing file or an unusable corpus ends with one line that names the thing and
the fix instead of a traceback from deep inside JAX.
"""


class UserError(Exception):
  """Input the user can fix; the message says what is wrong and how to fix it."""
