"""The one exception type for bad user input.

Anything raised as :class:`UserError` reaches the user as one line on stderr and exit code 2
(see ``nimblebert.cli.main``). The message names the problem and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a missing file, a wrong column, a knob out of range, ..."""
