"""Files in and out: atomic writes (temp file + rename) and image files opened as they are shown.

**Writing.** Every file the CLI, the benchmark and the plotting export produce is written to a temporary file in
the destination folder and renamed over the destination with :func:`os.replace` (atomic on POSIX): a write that
fails halfway (disk full, a size limit, an interrupted process) leaves the previous file intact and no temporary
file behind.

**Reading images.** :func:`load_image` closes the file before it returns (a folder of thousands of images never
holds more than one file handle), applies the EXIF orientation (phone photos are explained as they are shown,
not as they are stored) and maps 16-bit greyscale to 8 bits by scaling (PIL's ``convert("RGB")`` clips
``I;16`` values above 255 to white).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write_text(path, "hello").read_text()
    'hello'
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from vit_patching.checks import check_positive_int

#: File name extensions read as images from a folder (benchmark and dataset runs).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

__all__ = [
    "atomic_open", "atomic_write_bytes", "atomic_write_text", "check_output_dir", "check_output_file", "list_image_files",
    "load_image",
    "load_mask",
]

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success rename it to ``path``, on error delete it.

    Args:
        path: destination (its parent folder is created).
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **kwargs: passed to :func:`open` (``encoding``, ``newline``).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.csv"
        >>> with atomic_open(path, newline="") as f:
        ...     _ = f.write("x,y\\n")
        >>> path.read_text()
        'x,y\\n'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the destination, so that os.replace is a rename on one file system (atomic).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # keep the old file's permissions; mkstemp creates 0600
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)



def _check_writable_ancestor(start: Path, text: str, name: str, plain: Path | None = None) -> None:
    """The first existing folder at or above ``start`` (the one a write creates in) must be a writable folder; the
    error names it plainly when it is ``plain`` (the output folder itself), else as where ``text`` is written."""
    existing = start
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name}: cannot create {text!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "" if existing == plain else f"cannot write {text!r}: the folder "
        raise ValueError(f"{name}: {what}{str(existing)!r} is not writable")

def check_output_file(path: PathLike, name: str) -> Path:
    """Check, before any work is done, that a file can be written at ``path`` (an existing file is replaced).

    Raises:
        ValueError: for an empty path, an existing folder, a parent that is a file, or a folder that cannot be
            written; the message names ``name``.

    Example:
        >>> check_output_file("", "--out")
        Traceback (most recent call last):
        ...
        ValueError: --out: expected a file path, got ''
    """
    text = os.fspath(path)
    if not text or not text.strip():
        raise ValueError(f"{name}: expected a file path, got {text!r}")
    p = Path(text)
    if p.is_dir():
        raise ValueError(f"{name}: expected a file path, got the existing folder {text!r}")
    _check_writable_ancestor(p.parent, text, name)
    if p.exists() and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise ValueError(f"{name}: cannot overwrite {text!r}: permission denied")
    return p


def check_output_dir(path: PathLike, name: str, subfolders: tuple[str, ...] = ()) -> Path:
    """Check, before any work is done, that a folder of results can be written at ``path`` (created if missing).

    Args:
        path: the output folder.
        name: the argument named in error messages (``"--out"``).
        subfolders: folders the run creates inside ``path`` (e.g. ``("chunks",)``); an existing file or
            read-only folder of that name is refused too.

    Raises:
        ValueError: for an empty path, an existing file, a parent that is a file, or a folder that cannot be
            written; the message names ``name``.

    Example:
        >>> check_output_dir("", "--out")
        Traceback (most recent call last):
        ...
        ValueError: --out: expected a folder path, got ''
    """
    text = os.fspath(path)
    if not text or not text.strip():
        raise ValueError(f"{name}: expected a folder path, got {text!r}")
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}: expected a folder for a dataset run, got the file {text!r}")
    _check_writable_ancestor(p, text, name, plain=p)
    for sub in subfolders:
        q = p / sub
        if q.exists() and not q.is_dir():
            raise ValueError(f"{name}: {str(q)!r} is not a folder (a run writes its {sub} there): move it away")
        if q.is_dir() and not os.access(q, os.W_OK | os.X_OK):
            raise ValueError(f"{name}: {str(q)!r} is not writable")
    return p


# ------------------------------------------------------------------------------------------------ reading
def list_image_files(
    folder: PathLike, name: str = "images", n: int | None = None, *, allow_empty: bool = False
) -> list[Path]:
    """The image files directly in ``folder`` (extension in :data:`IMAGE_EXTENSIONS`, any case), sorted by name.

    The one folder listing of the benchmark (``images_dir``, ``masks_dir``) and dataset runs (``images``).

    Args:
        folder: the folder to list (not recursive; sub-folders and other files are ignored).
        name: the argument named in error messages.
        n: keep only the first ``n`` files (a positive int), or all with ``None``.
        allow_empty: return ``[]`` for a folder without image files instead of raising.

    Raises:
        ValueError: ``folder`` is a file or a missing path, ``n`` is not a positive int, or no image file is
            found (unless ``allow_empty``); each message starts with ``name``.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> for f in ("b.PNG", "a.jpg", "notes.txt"):
        ...     _ = (folder / f).write_bytes(b"")
        >>> [p.name for p in list_image_files(folder)]
        ['a.jpg', 'b.PNG']
    """
    path = Path(folder)
    if not path.is_dir():
        what = "a file" if path.exists() else "a missing path"
        raise ValueError(f"{name}: expected a folder of images, got {what}: {str(path)!r}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if n is not None:
        files = files[: check_positive_int(n, "n")]
    if not files and not allow_empty:
        raise ValueError(f"{name}: expected image files ({', '.join(IMAGE_EXTENSIONS)}) in {str(path)!r}, found none")
    return files


def _to_8bit(im: Any) -> Any:
    """16/32-bit greyscale (``I;16*``, ``I``) and float (``F``) images as 8-bit ``L``, scaled, not clipped."""
    from PIL import Image

    if im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64) / 257.0  # 65535 -> 255
    elif im.mode == "I":  # PIL opens 16-bit PNGs as "I" in some versions; values are 16-bit
        arr = np.asarray(im, dtype=np.float64) / 257.0
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else arr
    else:
        return im
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _open(path: PathLike | io.IOBase, convert: Callable[[Any], Any]) -> Any:
    from PIL import Image, ImageOps

    with Image.open(path) as im:  # closed on return: no file handle outlives the call
        upright = ImageOps.exif_transpose(im)  # a loaded copy, rotated as the EXIF orientation says
        out = convert(_to_8bit(upright))
        out.load()
    return out


def load_image(path: PathLike | io.IOBase) -> Any:
    """Open an image file as an 8-bit RGB ``PIL.Image``: EXIF orientation applied, 16-bit scaled, file closed.

    ``path`` may also be a binary stream (``io.BytesIO(data)``): dataset runs decode the very bytes they hash.

    Raises:
        OSError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError: as :func:`PIL.Image.open`.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "grey16.png"
        >>> Image.fromarray(np.full((2, 3), 65535, dtype=np.uint16)).save(path)
        >>> im = load_image(path)
        >>> im.mode, im.size, im.getpixel((0, 0))
        ('RGB', (3, 2), (255, 255, 255))
    """
    return _open(path, lambda im: im.convert("RGB"))


def load_mask(path: PathLike) -> Any:
    """Open a mask file as an 8-bit ``L`` image: 255 where any channel is non-zero (the object), else 0.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.png"
        >>> Image.fromarray(np.array([[0, 1]], dtype=np.uint8)).save(path)
        >>> np.asarray(load_mask(path)).tolist()
        [[0, 255]]
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
    if upright.mode in ("P", "PA", "RGBA"):
        upright = upright.convert("RGB")  # colour, not alpha, marks the object
    elif upright.mode == "LA":
        upright = upright.getchannel("L")
    arr = np.asarray(upright)
    fg = arr.any(axis=-1) if arr.ndim == 3 else arr != 0
    return Image.fromarray(fg.astype(np.uint8) * 255)
