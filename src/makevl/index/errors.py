"""The errors of an index that cannot be used as it is; each message names the file and the fix."""


class IndexStoreError(RuntimeError):
    """An index that cannot be used as it is."""


class IndexFileError(IndexStoreError):
    """A file of an index that is missing or corrupt."""


class ModelMismatchError(IndexStoreError):
    """Queries would be encoded by a different model than the one that built the index."""
