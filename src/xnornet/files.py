"""Writing output files safely: one helper for checkpoints and caches alike."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomically(path, write: Callable[[str], None]) -> None:
    """write(tmp) fills a temporary file beside `path`, which is then renamed into place: no
    reader sees a torn file, and a failed write leaves nothing behind. The file follows the
    umask like any output (mkstemp would leave it 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        mask = os.umask(0)  # reading the umask means setting it: put it straight back
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
