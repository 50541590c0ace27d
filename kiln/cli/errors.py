"""The command line's own error: bad flags or files, reported as one `kiln: error: ...` line."""
from ..errors import KilnError


class CLIError(KilnError):
    """A command-line usage problem the user can fix (a malformed spec, a missing file, a bad flag value)."""
