"""The root of every error a user can fix; each stage raises its own subclass of it."""


class UserError(Exception):
    """An error the user can fix (bad flag, file, list line, checkpoint). The commands print it and exit 2."""
