"""The one exception type for problems the user can fix."""


class BuildError(Exception):
    """A problem with the input or the environment that the user can fix.

    The message says what is wrong and how to fix it; `build.py` prints it as one line and exits
    with status 2.
    """
