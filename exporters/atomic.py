"""Atomic file writes, shared by every writer: `.onnx`/`.castml` saves, checkpoints, CLI outputs.

Why: a save killed mid-way (SIGKILL, power loss, a full disk) must leave the old file or the new
one, never a torn one, so data goes to a temp file beside the target, is fsynced, and
`os.replace`d over it (then the folder is fsynced so the rename itself is durable).

A kill between creating the temp file and the rename leaves the temp file behind. Its name says
whose it is: `.<target name>.<pid>.<host>.<random>.tmp` (`host`: a short hash of the host name),
so every successful save removes the temp files *of the same target* left by writers on this
host whose process is gone. Temp files of live writers (another process or thread saving to the
same path right now) and of other hosts sharing the folder are never touched, so concurrent
savers cannot delete each other's work. (Names of that form beside a target are reserved; a
target name too long for the pattern uses a hash of it instead.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Iterable, Iterator

__all__ = ["atomic_path", "write_atomic", "remove_stale_temps", "temp_name"]

NAME_MAX = 255  # bytes in one path component on every common file system
_HOST = hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


def _tag(name: str) -> str:
    """The target's name as it appears in its temp names (a hash when the name is too long)."""
    if len(f".{name}.{2**22}.{_HOST}.00000000.tmp".encode()) <= NAME_MAX:
        return name
    return "h" + hashlib.blake2s(name.encode(), digest_size=8).hexdigest()


def temp_name(target: str, pid: int | None = None) -> str:
    """A fresh temp file name (no folder) for writing `target` from process `pid` (default: this one).

    >>> n = temp_name("/data/m.onnx", pid=42); n.startswith(".m.onnx.42.") and n.endswith(".tmp")
    True
    """
    pid = os.getpid() if pid is None else pid
    return f".{_tag(os.path.basename(target))}.{pid}.{_HOST}.{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's; anything else: assume alive (never delete in doubt)
        return True
    return True


def remove_stale_temps(target: str) -> list[str]:
    """Delete the temp files of `target` left by dead writers on this host; the names removed.

    Only POSIX has a harmless liveness probe (`kill(pid, 0)`); elsewhere nothing is removed.

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); target = os.path.join(d, "m.castml")
    >>> dead = os.path.join(d, temp_name(target, pid=2**22 + 1))  # above Linux's pid_max: never alive
    >>> mine = os.path.join(d, temp_name(target))                  # a live writer's (this process)
    >>> for p in (dead, mine): open(p, "wb").close()
    >>> remove_stale_temps(target) == [os.path.basename(dead)], os.path.exists(mine)
    (True, True)
    """
    if os.name != "posix":
        return []
    folder = os.path.dirname(os.path.abspath(target))
    pattern = re.compile(rf"\.{re.escape(_tag(os.path.basename(target)))}\.(\d+)\.{_HOST}\.[0-9a-f]{{8}}\.tmp")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:  # gone already (another saver cleaned it) or not ours to remove
            pass
    return sorted(removed)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield the path of a new empty temp file beside `path`; when the block ends without an
    exception the file is fsynced and renamed over `path`, otherwise deleted.

    The temp file gets the usual mode of a new file (0666 less the umask), as `open` would give.

    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with atomic_path(target) as tmp, open(tmp, "w") as f:
    ...     _ = f.write("done")
    >>> open(target).read(), os.listdir(os.path.dirname(target))
    ('done', ['out.txt'])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(folder, temp_name(path))
        try:  # O_EXCL: never reuse or follow an existing name; mode 0o666 lets the umask apply
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temp file beside {path!r} after 100 tries")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    remove_stale_temps(path)
    _fsync_folder(folder)


def write_atomic(path: str | os.PathLike, data: bytes | Iterable[bytes | memoryview]) -> None:
    """Write `data` (bytes, or an iterable of byte chunks) to `path` atomically: temp file beside
    it, fsync, rename, and removal of temp files that killed saves to `path` left behind.

    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "f.bin"); write_atomic(p, [b"ab", b"c"]); open(p, "rb").read()
    b'abc'
    """
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
