"""The one exception type for a user's mistake (no dependencies, importable from every layer)."""


class UserError(ValueError):
    """A user's mistake (a missing or wrong file, an absent topic, an existing output folder, ...).

    The message is one line naming the thing and what to do; ``seg-perception`` prints it without a traceback
    and exits with code 2. A ValueError, so code that already catches ValueError keeps working."""
