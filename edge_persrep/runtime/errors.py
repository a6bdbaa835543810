"""The package's own error types.

Every failure a user can cause (a bad photo, a corrupt bundle, a wrong option) raises a subclass of
`EdgePersrepError` whose message names the file and says what to do. The CLI prints that one line;
`--debug` shows the traceback.
"""


class EdgePersrepError(Exception):
    """Base class: a user-actionable failure."""


class ImageError(EdgePersrepError):
    """A photo or mask could not be read or is unusable."""


class BundleError(EdgePersrepError):
    """A bundle directory is missing files, corrupt, or from an unsupported format version."""


class StoreError(EdgePersrepError):
    """A prototype store is corrupt, or was computed with another model."""
