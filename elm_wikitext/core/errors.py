"""The one exception type for problems the user can fix."""

from contextlib import contextmanager


class BuildError(Exception):
    """A problem with the input or the environment that the user can fix.

    The message says what is wrong and how to fix it; `build.py` prints it as one line and exits
    with status 2.
    """


@contextmanager
def writing(what: str):
    """Turn a failed write (full disk, read-only folder, quota) into a BuildError naming `what`
    was being written; the caller's own cleanup (temporary files) runs before this."""
    try:
        yield
    except OSError as err:
        raise BuildError(f"cannot write {what} ({err}): free some space or make it writable, then "
                         "rerun the same command; what was finished before is kept") from None
