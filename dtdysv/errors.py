"""The root of every error a user can fix; each stage raises its own subclass of it."""


class UserError(Exception):
    """An error the user can fix (bad flag, file, list line, checkpoint). The commands print it and exit 2."""


def message_of(err: UserError) -> str:
    """The error's own message, without the "Caught X in DataLoader worker process N. Original Traceback ..."
    wrapper that torch puts around an exception raised in a worker."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        return text.rpartition(marker)[2].strip()
    return text
