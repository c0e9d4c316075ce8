"""DurableWriter: torch.save to a file that is either complete on disk or absent.

A file is written under a temporary name in its own folder, fsync'ed, renamed over
its final name, and the folder is fsync'ed, so a kill or a power loss at any moment
leaves either the old file or the new one, never a torn one. The bytes go to the
disk by direct I/O where the file system allows it: a buffered write would spend
0.2-1.3 s of CPU on a 600 MB checkpoint copying it into the page cache, taken from
the training threads on a small machine (see docs/performance.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".partial"
# ".<final name>.<host>-<pid>.partial" (sharded folders replaced aside: "....replaced.partial");
# files of earlier versions have no host: ".<final name>.<pid>.partial".
TEMPORARY_NAME = re.compile(r"^\..+\.(?:(?P<host>[A-Za-z0-9_-]+)-)?(?P<pid>\d+)(?:\.replaced)?\.partial$")

# O_DIRECT needs the buffer address, the file offset and the length of every write to
# be multiples of the device's logical block size; 4096 covers the disks in use.
DIRECT_IO_ALIGNMENT = 4096

# From this release on, torch's serialization settings are kept per thread (a
# ContextVar each), so that patching them on one thread changes nothing that another
# thread's torch.save sees. Before it they are process-wide, and left alone.
PER_THREAD_SAVE_SETTINGS_SINCE = (2, 13)


@contextlib.contextmanager
def checkpoint_save_settings():
    """torch.save settings for our own files, on the calling thread only, while the block runs.

    - No zip CRC-32: it is most of torch.save's CPU time (0.8 of 1.0 s for 600 MB),
      taken from training on a small machine. Completeness comes from the atomic
      rename instead; torch.load does not check the CRC.
    - Tensor data starts at 4096-byte offsets in the file, so that it can go to the
      disk by direct I/O without a copy.
    On older torch, where these settings are process-wide, a torch.save elsewhere in
    the process (a user callback, the eval runner) would silently change format while
    a checkpoint is written; there the defaults stay, every byte then goes through
    DirectFile's staging buffer, and the CRC is computed.
    """
    if torch.__version__ < PER_THREAD_SAVE_SETTINGS_SINCE:
        yield
        return
    from torch.utils.serialization import config

    with config.patch({"save.compute_crc32": False, "save.storage_alignment": DIRECT_IO_ALIGNMENT}):
        yield


class DirectIOUnsupported(Exception):
    """The file system refused O_DIRECT (some network and FUSE file systems, tmpfs before Linux 6.6)."""


class DirectFile:
    """A write-only file for torch.save that sends page-aligned data straight to the disk.

    With O_DIRECT the disk reads the caller's memory itself (0.01 s of CPU for 600 MB).
    Large tensors of a checkpoint snapshot are page-aligned (brain_gen.memory), and
    torch.save is told to start tensor data at aligned file offsets, so most bytes go
    straight from the snapshot. The rest (zip headers, small tensors, unaligned tails)
    is gathered in an aligned staging buffer.
    """

    def __init__(self, path: Path, staging_bytes: int = 1 << 20):
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except (AttributeError, OSError) as error:  # no O_DIRECT on this OS, or refused here
            raise DirectIOUnsupported from error
        try:
            self._staging = mmap.mmap(-1, staging_bytes)  # page-aligned
        except BaseException:
            os.close(self._fd)
            raise
        self._staged = memoryview(self._staging)
        self._staged_bytes = 0
        self.size = 0
        self.direct_bytes = 0
        # torch.save turns an exception raised in write() into a vague RuntimeError; the
        # real one is kept here and raised by save_direct instead.
        self.error: BaseException | None = None

    def _write_all(self, data: memoryview) -> None:
        done = 0
        while done < len(data):
            try:
                done += os.write(self._fd, data[done:])
            except OSError as error:
                self.error = DirectIOUnsupported() if error.errno == errno.EINVAL else error
                raise self.error from error

    def _flush_staging(self, length: int) -> None:
        self._write_all(self._staged[:length])
        self._staged_bytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        position = 0
        while position < len(view):
            aligned_length = (len(view) - position) // DIRECT_IO_ALIGNMENT * DIRECT_IO_ALIGNMENT
            # The file offset is aligned whenever the staged bytes fill whole blocks.
            if aligned_length and self._staged_bytes % DIRECT_IO_ALIGNMENT == 0:
                address = np.frombuffer(view[position:], dtype=np.uint8, count=1).ctypes.data
                if address % DIRECT_IO_ALIGNMENT == 0:
                    if self._staged_bytes:
                        self._flush_staging(self._staged_bytes)
                    self._write_all(view[position : position + aligned_length])
                    self.direct_bytes += aligned_length
                    position += aligned_length
                    continue
            count = min(len(self._staging) - self._staged_bytes, len(view) - position)
            self._staged[self._staged_bytes : self._staged_bytes + count] = view[position : position + count]
            self._staged_bytes += count
            position += count
            if self._staged_bytes == len(self._staging):
                self._flush_staging(self._staged_bytes)
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing to do: data is written as it comes, and close() writes the rest."""

    def abandon(self) -> None:
        """Close without writing what is staged: the caller deletes the file."""
        os.close(self._fd)
        # After a failed write, an exception's traceback may still hold slices of the
        # staging buffer; the mapping is then freed with the last of them.
        with contextlib.suppress(BufferError):
            self._staged.release()
            self._staging.close()

    def close(self) -> None:
        """Write the staged tail padded to a whole block, cut the file to size, fsync."""
        try:
            if self._staged_bytes:
                padded = -(-self._staged_bytes // DIRECT_IO_ALIGNMENT) * DIRECT_IO_ALIGNMENT
                self._staged[self._staged_bytes : padded] = bytes(padded - self._staged_bytes)
                self._flush_staging(padded)
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        finally:
            self.abandon()


def save_direct(state: Any, path: Path) -> None:
    """torch.save ``state`` to ``path`` by direct I/O and fsync it; DirectIOUnsupported if refused."""
    handle = DirectFile(path)
    try:
        torch.save(state, handle)
    except BaseException as error:
        handle.abandon()
        if handle.error is not None and handle.error is not error:
            raise handle.error from error
        raise
    if handle.error is not None:  # swallowed somewhere inside torch.save
        handle.abandon()
        raise handle.error
    handle.close()


def save_buffered(state: Any, path: Path) -> None:
    """torch.save ``state`` to ``path`` through the page cache and fsync it."""
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def this_host() -> str:
    """This machine's name as it goes into temporary names (no dots, so that they parse back)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, and naming its writer."""
    return path.with_name(f".{path.name}.{this_host()}-{os.getpid()}{TEMPORARY_SUFFIX}")


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_temporaries(root: Path) -> tuple[int, int]:
    """Remove the temporary files and folders under ``root`` whose writer no longer runs: (count, bytes).

    Left by a process killed during a write. Only those written on this machine are
    judged (a process of another machine sharing the folder cannot be checked).
    """
    removed, freed = 0, 0
    host = this_host()
    for path in root.rglob(f".*{TEMPORARY_SUFFIX}") if root.is_dir() else []:
        match = TEMPORARY_NAME.match(path.name)
        if match is None or match["host"] not in (None, host) or _process_runs(int(match["pid"])):
            continue
        try:
            if path.is_dir():
                size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
                shutil.rmtree(path)
            else:
                size = path.stat().st_size
                path.unlink()
        except FileNotFoundError:
            continue  # gone meanwhile
        removed, freed = removed + 1, freed + size
    return removed, freed


def fsync_folder(folder: Path) -> None:
    """Make a rename or a removal in ``folder`` itself durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class DurableWriter:
    """Writes torch.save files atomically and durably, by direct I/O where the file system allows it.

    Remembers the folders whose file system refused O_DIRECT, so that later files
    there are written buffered at once instead of twice.
    """

    def __init__(self) -> None:
        self.buffered_folders: set[Path] = set()

    def write(self, state: Any, path: str | os.PathLike) -> None:
        """torch.save ``state`` to a temporary file next to ``path``, fsync, rename over ``path``, fsync the folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(path)
        try:
            with checkpoint_save_settings():
                if path.parent not in self.buffered_folders:
                    try:
                        save_direct(state, temporary)
                    except DirectIOUnsupported:
                        self.buffered_folders.add(path.parent)
                        log.warning("checkpoint: %s does not take direct I/O; checkpoints there are written buffered", path.parent)
                if path.parent in self.buffered_folders:
                    save_buffered(state, temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        # Before anything relies on the file (deleting the one it replaces, a hard link).
        fsync_folder(path.parent)
