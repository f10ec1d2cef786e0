"""The exception hierarchy: everything snapshop raises on bad input derives from SnapshopError."""


class SnapshopError(Exception):
    """Base class of every error snapshop reports to a user (exit code 1, one line, no traceback)."""


class ImageError(SnapshopError):
    """An image could not be read: missing, not an image, truncated, too large."""


class ManifestError(SnapshopError):
    """A catalog manifest is malformed or missing required fields."""


class IndexError_(SnapshopError):
    """The index folder is missing, locked, corrupt or built with another model."""


class ModelError(SnapshopError):
    """A model name or file is unknown or unusable."""


class DatasetError(SnapshopError):
    """A demo or evaluation data set could not be built or read."""


class SettingsError(SnapshopError):
    """A setting has an invalid value."""


class BackendError(SnapshopError):
    """An index backend server (Milvus) or cluster (Ray) is unreachable, refuses a request, or is not installed."""
