"""Errors with messages meant for the user. Torch-free, so any layer can raise or catch them."""


class XnornetError(RuntimeError):
    """Base class: the CLI prints these as a one-line error instead of a traceback."""


class DataError(XnornetError):
    """The data set is missing, corrupt or not what we expect. The message says what to do."""


class CheckpointError(XnornetError):
    """A checkpoint is missing, unreadable, or does not match the model it describes."""


def require_file(path, what: str, error: type[Exception]) -> None:
    """Raise error("<what> <path> does not exist" / "... is a folder, not a file" / "... is not a
    regular file") unless path is a regular file (a device, a FIFO or a socket is refused too)."""
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, not a file")
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    if not path.is_file():
        raise error(f"{what} {path} is not a regular file")
