"""Files and folders: the writable formats, atomic writes with exclusive publishing, removal of
temporaries a killed run left, and image discovery and output-folder checks.

atomic_write is the one implementation of "never a partial file under the final name" for
images (io.write) and weights files (pcsr.weights) alike.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import glob
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from ..errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

_FORMAT_BY_EXTENSION = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
WRITABLE_EXTENSIONS = tuple(_FORMAT_BY_EXTENSION)


def format_for(suffix: str) -> str | None:
    """The format written for a file extension ('.JPEG' -> 'JPEG'), None if not writable."""
    return _FORMAT_BY_EXTENSION.get(suffix.lower())


def short_reason(err: BaseException) -> str:
    """An exception as one line of at most 120 characters, for one-line error messages."""
    text = str(err).strip().splitlines()
    text = text[0] if text else type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# Temporary files are named `.<final name>.pcsr-<pid>-<8 hex>.tmp` next to their target: hidden, and
# carrying the writer's PID, so that a later run can tell a temporary left by a killed run (kill -9,
# power loss) from one that another live run is still writing. Only names of exactly this shape are
# ever removed, and only when stale (see remove_stale_temporaries): a user's own files never are.
_TEMP_RE = re.compile(r"^\..+\.pcsr-(\d+)-[0-9a-f]{8}\.tmp$")
_PROBE_RE = re.compile(r"^\.pcsr-write-test-(\d+)-[0-9a-f]{8}$")
STALE_SECONDS = 60.0  # a live writer touches its temporary far more often than this
_swept: set[str] = set()
_exclusive: contextvars.ContextVar[bool] = contextvars.ContextVar("pcsr_exclusive_writes", default=False)


@contextlib.contextmanager
def exclusive_writes(on: bool = True):
    """Within this block, write_image never replaces an existing file (unless told to per call):
    what `pcsr upscale` without --overwrite needs, since another run may publish the same name
    between our check and our write."""
    token = _exclusive.set(on)
    try:
        yield
    finally:
        _exclusive.reset(token)


def resolve_overwrite(overwrite: bool | None) -> bool:
    """An explicit choice, or for None: replace unless inside exclusive_writes()."""
    return not _exclusive.get() if overwrite is None else overwrite


def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.pcsr-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: keep its file
    return True


def remove_stale_temporaries(folder: Path, now: float | None = None) -> list[Path]:
    """Remove our own temporaries (and write probes) in `folder` that a killed run left: the name is
    ours, it is a regular file of this user, untouched for STALE_SECONDS, and its PID runs no process
    here. Best effort: any doubt or error keeps the file."""
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        found = _TEMP_RE.match(e.name) or _PROBE_RE.match(e.name)
        if not found:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < STALE_SECONDS:
                continue
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                continue
            if _pid_alive(int(found.group(1))):
                continue
            os.unlink(e.path)
            removed.append(Path(e.path))
        except (OSError, ValueError):
            continue
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.path.abspath(folder)
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(folder)


# errno values of file systems that have no hard links (FAT, some network and FUSE ones)
_NO_LINKS = {getattr(errno, n) for n in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EMLINK", "EXDEV")
             if hasattr(errno, n)}


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give the finished temporary its final name. Replacing: os.replace. Otherwise exclusively:
    a hard link fails if the name exists, so two runs never replace each other's file; where hard
    links are not supported, the name is claimed with an O_EXCL create and then replaced by ours."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise _exists(path) from None
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)  # our own empty placeholder
            raise
        return
    with contextlib.suppress(OSError):
        os.unlink(tmp)


class _Exists(Exception):
    pass


def _exists(path: Path) -> "_Exists":
    return _Exists(f"{path}: already exists (written meanwhile by another run?); use --overwrite to replace it")


def atomic_write(path: str | os.PathLike, writer: Callable[[BinaryIO], None], *, overwrite: bool = True,
                 error: type[Exception] = ImageError) -> None:
    """Write next to the target and publish it under its name only once complete, so the final name
    is never partial; on any failure or interruption (KeyboardInterrupt, and the signals `pcsr`
    turns into it) the temporary is removed. Errors are `error` with a one-line message."""
    path = Path(path)
    folder = path.parent
    _sweep_once(folder)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise error(str(_write_error(path, err))) from None
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path, overwrite)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, _Exists):
            raise error(str(err)) from None
        if isinstance(err, OSError):
            raise error(str(_write_error(path, err))) from None
        if isinstance(err, ValueError):  # Pillow's refusal, e.g. a size the format cannot hold
            raise error(f"{path}: cannot write image ({short_reason(err)})") from None
        raise
    _fsync_folder(folder)


def _write_error(path: Path, err: OSError) -> ImageError:
    folder = f"{path.parent}{os.sep}"
    if isinstance(err, FileNotFoundError):
        return ImageError(f"{folder}: output folder does not exist")
    if isinstance(err, NotADirectoryError):
        return ImageError(f"{path.parent}: is not a folder")
    if isinstance(err, PermissionError):
        return ImageError(f"{folder}: output folder is not writable")
    if isinstance(err, IsADirectoryError):
        return ImageError(f"{path}: is a folder")
    return ImageError(f"{path}: cannot write ({err.strerror or short_reason(err)})")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort, and impossible on some systems."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- files and folders


def list_images(inputs: Iterable[str | os.PathLike] | str | os.PathLike, *, unreadable: bool = False) -> list[Path]:
    """Expand files, folders and glob patterns into image paths, in a predictable order.

    Folders give their image files (by extension, non-recursive, sorted, hidden files
    such as macOS "._x.jpg" skipped); globs give the matching image files, sorted;
    named files are taken as they are. Each file appears once, at its first place.
    unreadable: also give entries with an image name that are no regular file (a named pipe, a
    symbolic link loop or a dangling link), so that the caller reports them (read_image refuses
    them without opening them) instead of their vanishing silently.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = _folder_images(path, unreadable)
            if not files:
                raise ImageError(f"{text}: no images in this folder")
        elif path.exists() or path.is_symlink():
            files = [path]
        elif _GLOB_CHARS.search(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise ImageError(f"{text}: no file matches")
            files = [Path(m) for m in matches if _is_image_name(m) and _kind(Path(m), unreadable) == "file"]
            if not files:
                raise ImageError(f"{text}: no image file matches")
        else:
            raise ImageError(f"{text}: no such file or folder")
        for file in files:
            key = os.path.normcase(os.path.realpath(file))
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


_GLOB_CHARS = re.compile(r"[*?[]")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _kind(path: Path | os.DirEntry, unreadable: bool) -> str:
    """"file" (a regular file, or with `unreadable` anything else that is no folder), "folder" or
    "skip". Never opens the entry, and a symbolic link loop (whose stat raises ELOOP) is no crash."""
    try:
        st = path.stat() if isinstance(path, Path) else path.stat(follow_symlinks=True)
    except OSError:
        return "file" if unreadable else "skip"  # loop, dangling link, no permission to stat
    if stat.S_ISDIR(st.st_mode):
        return "folder"
    return "file" if unreadable or stat.S_ISREG(st.st_mode) else "skip"


def _folder_images(folder: Path, unreadable: bool = False) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise ImageError(f"{folder}: cannot list this folder ({err.strerror or short_reason(err)})") from None
    return [
        folder / e.name
        for e in entries
        if not e.name.startswith(".") and _is_image_name(e.name) and _kind(e, unreadable) == "file"
    ]


def check_output_dir(path: str | os.PathLike) -> None:
    """Fail before any work is done, not after the first slow upscale."""
    folder = Path(path)
    shown = f"{folder}{os.sep}"
    if folder.exists() and not folder.is_dir():
        raise ImageError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(f"{shown}: cannot create the output folder (part of the path is a file)") from None
    except PermissionError:
        raise ImageError(f"{shown}: cannot create the output folder (permission denied)") from None
    except OSError as err:
        raise ImageError(f"{shown}: cannot create the output folder ({err.strerror or short_reason(err)})") from None
    probe = folder / f".pcsr-write-test-{os.getpid()}-{secrets.token_hex(4)}"  # see _PROBE_RE
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        raise ImageError(f"{shown}: output folder is not writable") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
