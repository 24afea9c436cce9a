"""User-facing errors.

`UserError` and its subclasses are mistakes in what the user gave us (a config key, a path, a data
row). The CLI prints them as one line on stderr and exits with status 2, without a traceback.
Library code raises them; it never prints or exits itself.

`TrainingError` (exit 1) means training cannot go on; `DiskFullError` is the one for a full disk
(`writing(path)` turns a disk-full failure of a writer into it). `Interrupted` is the Ctrl-C of a
run, with where it stopped and how to resume (exit 130).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem with the user's input. The CLI prints `error: <message>` and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """An unknown, ill-typed or out-of-range configuration key. The message names the key."""


class DataError(UserError):
    """A bad dataset file or row. The message names the file and, where known, the line."""


class TrainingError(Exception):
    """Training cannot go on (for example three non-finite losses in a row). Exit status 1."""

    exit_code = 1


class DiskFullError(TrainingError):
    """The disk (or the quota) is full: `path` could not be written. Exit status 1.

    Every writer of a run keeps what it wrote before intact (checkpoints are atomic, metrics.jsonl
    is append-only and a torn last line is dropped on resume); the message names the path and, once
    the trainer has added it (`with_hint`), the last good checkpoint and the command that resumes.
    """

    def __init__(self, path: object, hint: str = "") -> None:
        self.path = str(path)
        self.hint = hint
        msg = f"disk full: cannot write {self.path} (no space left on the device)"
        super().__init__(f"{msg}; {hint}" if hint else msg)

    def with_hint(self, hint: str) -> DiskFullError:
        """The same error with `hint` (what is intact, how to go on) appended to the message."""
        return DiskFullError(self.path, hint)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run. The message says where it stopped and how to resume; exit status 130."""

    exit_code = 130


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from or during (cause, else context), once each."""
    out: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and all(cur is not e for e in out):
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def is_disk_full(err: BaseException) -> bool:
    """True when `err` or an exception in its chain says the disk or the quota is full.

    Covers a plain `OSError` (ENOSPC / EDQUOT), safetensors' "No space left on device (os error 28)"
    and torch.save's `RuntimeError` ("unexpected pos ...") when it wrote to a Python file object (the
    OSError is then its context).
    """
    return any(
        isinstance(e, DiskFullError)
        or (isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS)
        or any(t in str(e).lower() for t in _DISK_FULL_TEXT)
        for e in _chain(err)
    )


def find_disk_full(err: BaseException, default_path: object) -> DiskFullError | None:
    """The `DiskFullError` in `err`'s chain; a new one (for the file the OSError names, else
    `default_path`) when `err` is another disk-full error; None when it is something else."""
    chain = _chain(err)
    found = next((e for e in chain if isinstance(e, DiskFullError)), None)
    if found is not None or not is_disk_full(err):
        return found
    filename = next((e.filename for e in chain if isinstance(e, OSError) and e.filename), None)
    return DiskFullError(filename or default_path)


@contextmanager
def writing(path: object) -> Iterator[None]:
    """Turn a disk-full failure inside the block into `DiskFullError(path)` (other errors pass)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(path) from err
        raise
