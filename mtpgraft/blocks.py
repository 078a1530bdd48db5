"""File blocks: copy byte ranges between files (sharing blocks where the filesystem can) and tell
which blocks two files share (FIEMAP).

On btrfs, XFS (reflink=1) and ZFS (block cloning) `copy_file_range` shares extents instead of
copying them, but only for whole blocks whose source and destination offsets are both multiples of
the block size. `copy_range` therefore splits a range whose offsets are congruent into an unaligned
head, whole blocks, and a tail; elsewhere (ext4) the kernel copies the bytes without a user-space
buffer, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .errors import GGUFFormatError

DEFAULT_BLOCK = 4096
_MAX_BLOCK = 1 << 20
_STEP = 1 << 30  # big calls, as cp does; a multiple of every block size

_FICLONERANGE = 0x4020940D  # linux/fs.h: _IOW(0x94, 13, struct file_clone_range)
_CLONE_RANGE = struct.Struct("=qQQQ")  # src_fd, src_offset, src_length, dest_offset

# linux/fiemap.h
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_EXTENT_UNKNOWN = 0x2
_FIEMAP_EXTENT_DELALLOC = 0x4
_FIEMAP_EXTENT_SHARED = 0x2000
_HEAD = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
_BATCH = 256


def block_size(fd: int) -> int:
    """The block size to align copied ranges to: the filesystem's (statvfs f_bsize) when it is a
    power of two between 4 KiB and 1 MiB, else 4 KiB (every filesystem that clones uses >= 4 KiB)."""
    try:
        b = os.fstatvfs(fd).f_bsize
    except OSError:
        return DEFAULT_BLOCK
    if DEFAULT_BLOCK <= b <= _MAX_BLOCK and not b & (b - 1):
        return b
    return DEFAULT_BLOCK


def can_clone(src_fd: int, dst_fd: int) -> bool:
    """Whether `dst` can share blocks of `src` (the same copy-on-write filesystem: btrfs, XFS with
    reflink=1, ZFS with block cloning), found by cloning src's first block into dst at offset 0.
    dst's contents there are not kept: call it on a file about to be written from the start."""
    block = block_size(dst_fd)
    try:
        if os.fstat(src_fd).st_size < block:
            return False
        fcntl.ioctl(dst_fd, _FICLONERANGE, _CLONE_RANGE.pack(src_fd, 0, block, 0))
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL, ENOTTY: the kernel copies instead
        return False
    return True


def copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int, *, clone: bool = True,
               block: int = DEFAULT_BLOCK, progress: Callable[[int], None] = lambda n: None) -> None:
    """Copy `count` bytes from src at `src_off` to dst at `dst_off`. With `clone`, whole blocks at
    congruent offsets are handed to copy_file_range, which shares them on copy-on-write filesystems;
    without, every byte is copied (sendfile: in the kernel, never shared)."""
    if not clone:
        _real_copy(src_fd, dst_fd, src_off, dst_off, count, progress)
        return
    if (src_off - dst_off) % block:
        _kernel_copy(src_fd, dst_fd, src_off, dst_off, count, progress)
        return
    head = min(count, -dst_off % block)
    whole = (count - head) // block * block
    # The partial blocks at either end are copied, never handed to copy_file_range: at the source's
    # end of file it would clone the last, partial block, and the next write into the rest of that
    # block (padding, the MTP block) would copy it again (XFS reserves a copy-on-write extent for it).
    for off, n, copy in ((0, head, _real_copy), (head, whole, _kernel_copy),
                         (head + whole, count - head - whole, _real_copy)):
        if n:
            copy(src_fd, dst_fd, src_off + off, dst_off + off, n, progress)


def _kernel_copy(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int,
                 progress: Callable[[int], None]) -> None:
    done = 0
    while done < count:
        n = min(_STEP, count - done)
        try:
            w = os.copy_file_range(src_fd, dst_fd, n, src_off + done, dst_off + done)
        except (AttributeError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                                           errno.EOPNOTSUPP):
                raise
            _real_copy(src_fd, dst_fd, src_off + done, dst_off + done, count - done, progress)
            return
        if w == 0:
            raise GGUFFormatError(f"unexpected end of input copying {count} bytes at offset {src_off}")
        done += w
        progress(w)


def _real_copy(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int,
               progress: Callable[[int], None]) -> None:
    os.lseek(dst_fd, dst_off, os.SEEK_SET)
    done = 0
    use_sendfile = hasattr(os, "sendfile")
    while done < count:
        n = min(_STEP, count - done)
        if use_sendfile:
            try:
                w = os.sendfile(dst_fd, src_fd, src_off + done, n)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_sendfile = False
                continue
        else:
            buf = os.pread(src_fd, min(n, 8 << 20), src_off + done)
            w = os.pwrite(dst_fd, buf, dst_off + done) if buf else 0
        if w == 0:
            raise GGUFFormatError(f"unexpected end of input copying {count} bytes at offset {src_off}")
        done += w
        progress(w)


# --------------------------------------------------------------------------- who shares what


@dataclass(frozen=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def shared(self) -> bool:
        return bool(self.flags & _FIEMAP_EXTENT_SHARED)


def extents(fd: int, start: int = 0, length: int | None = None) -> list[Extent] | None:
    """The file's extents overlapping [start, start+length) (FIEMAP), or None where the filesystem
    has none. No FIEMAP_FLAG_SYNC: that would flush the whole output first; bytes still in the page
    cache show as delayed-allocation extents, which are never shared anyway."""
    end = os.fstat(fd).st_size if length is None else start + length
    out: list[Extent] = []
    pos = start
    while pos < end:
        buf = bytearray(_HEAD.size + _BATCH * _EXTENT.size)
        _HEAD.pack_into(buf, 0, pos, end - pos, 0, 0, _BATCH, 0)
        try:
            fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                return None
            raise
        n = _HEAD.unpack_from(buf, 0)[3]
        if n == 0:
            break
        last = False
        for i in range(n):
            lo, ph, ln, _, _, fl, *_ = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
            out.append(Extent(lo, ph, ln, fl))
            last = bool(fl & _FIEMAP_EXTENT_LAST)
        pos = out[-1].logical + out[-1].length
        if last:
            break
    return out


def _clip(exts: list[Extent], start: int, end: int) -> list[Extent]:
    out = []
    for e in exts:
        lo, hi = max(start, e.logical), min(end, e.logical + e.length)
        if lo < hi and not e.flags & (_FIEMAP_EXTENT_UNKNOWN | _FIEMAP_EXTENT_DELALLOC):
            out.append(Extent(lo, e.physical + (lo - e.logical), hi - lo, e.flags))
    return out


def flagged_shared_bytes(fd: int, start: int, length: int) -> int | None:
    """Bytes of [start, start+length) in extents the filesystem marks shared (with any file)."""
    exts = extents(fd, start, length)
    if exts is None:
        return None
    return sum(e.length for e in _clip(exts, start, start + length) if e.shared)


def common_bytes(a_fd: int, a_off: int, b_fd: int, b_off: int, length: int) -> int | None:
    """Bytes of a's [a_off, a_off+length) stored in the very blocks that hold b's range at b_off:
    the blocks a reflink made a and b share. None where the filesystem has no FIEMAP."""
    ea, eb = extents(a_fd, a_off, length), extents(b_fd, b_off, length)
    if ea is None or eb is None:
        return None
    # both in a's coordinates: x in a <-> x - a_off + b_off in b
    xa = _clip(ea, a_off, a_off + length)
    xb = [Extent(e.logical - b_off + a_off, e.physical, e.length, e.flags) for e in _clip(eb, b_off, b_off + length)]
    total, j = 0, 0
    for e in xa:
        while j < len(xb) and xb[j].logical + xb[j].length <= e.logical:
            j += 1
        k = j
        while k < len(xb) and xb[k].logical < e.logical + e.length:
            f = xb[k]
            lo, hi = max(e.logical, f.logical), min(e.logical + e.length, f.logical + f.length)
            if lo < hi and e.physical - e.logical == f.physical - f.logical:
                total += hi - lo
            k += 1
    return total
