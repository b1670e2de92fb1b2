"""Models packed in an archive: .tar.gz, .tgz, .tar or .zip (SageMaker's model.tar.gz first).

The archive is unpacked into the download directory (the Job's scratch space) and the model is
found inside as in a directory source, or named by a `#path/inside` fragment of the URI; with
one, only the members under that path are unpacked. An archive is untrusted input: a member with
an absolute path or a '..' segment, a link that leaves the archive, a device file or pipe, more
files or bytes than the budget, and a member that unpacks to more than max_ratio times its
compressed size (an archive bomb) are each refused with a one-line cause, and the partly unpacked
tree is removed. The byte budget is the scratch space left (Scratch): what a Job's scratch volume
has, or the disk's free space, so that a bomb is stopped by a cause rather than by the kubelet
evicting the pod. Each tar member is checked before it is written, against the tree unpacked so
far (links followed), and tarfile's `data` filter checks it again where Python has it; a path the
filter would quietly rewrite (a leading '/') is refused. The budget is counted from the members'
declared sizes, which tar and zip both honour when extracting; the ratio from the bytes actually
decompressed (tar.gz, while each member is unpacked) or declared (zip, before any is written).
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import shutil
import stat
import tarfile
import zipfile
import zlib

from modelkiln.runtime.conversion.errors import ConversionFailed

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# A cap below the scratch space, for a scratch directory shared with other work; unset, the
# scratch space alone decides.
MAX_BYTES = int(os.environ["MODELKILN_ARCHIVE_MAX_BYTES"]) if os.environ.get("MODELKILN_ARCHIVE_MAX_BYTES") else None
MAX_FILES = int(os.environ.get("MODELKILN_ARCHIVE_MAX_FILES", "10000"))
# Weights hardly compress (float noise: about 1.1:1), text (configs, vocabularies, protobuf) 5 to
# 20:1; zeros compress about 1000:1, which is what an archive bomb holds.
MAX_RATIO = 200
# A member is judged on its ratio once it has unpacked this much: a small file that compresses
# well (a padded header, an empty table) costs no disk worth refusing.
RATIO_GRACE_BYTES = 1 << 20
COMPRESSED_CHUNK_BYTES = 64 << 10
# What tarfile reads at a time: bytes read ahead count towards the member before, so this stays
# well below the grace.
TAR_READ_BYTES = 256 << 10
GZIP_MAGIC = b"\x1f\x8b"


def is_archive(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def split_inside(uri: str) -> tuple[str, str | None]:
    """`uri` without a `#path/inside` fragment that follows an archive name, and that path."""
    base, hash_sign, inside = uri.rpartition("#")
    if hash_sign and is_archive(base.partition("?")[0]):
        return base, inside
    return uri, None


@dataclasses.dataclass(frozen=True)
class Scratch:
    """The space that downloads and unpacked archives share: a Job's scratch volume of
    `size_bytes` (--scratch-bytes) rooted at `root`, or without a size, the free space of the
    disk `root` is on (a full local disk fails with ENOSPC, a clear cause; a full scratch volume
    gets the pod evicted, so there `reserved_bytes` stay free for downloads still to come)."""

    root: pathlib.Path
    size_bytes: int | None = None
    reserved_bytes: int = 0

    def room(self) -> tuple[int, str]:
        """The bytes an archive may unpack to now, and what decided it (for the cause)."""
        if self.size_bytes is None:
            return shutil.disk_usage(self.root).free, f"the free space of {self.root}"
        reserve = f" and {self.reserved_bytes} kept for the calibration data" if self.reserved_bytes else ""
        return (self.size_bytes - used_bytes(self.root) - self.reserved_bytes,
                f"what is left of the {self.size_bytes} bytes of scratch space (--scratch-bytes; in a cluster "
                f"sized from spec.source.maxBytes) after what it holds{reserve}")


def used_bytes(root: pathlib.Path) -> int:
    """Disk used under `root`, counted as the kubelet counts an emptyDir: allocated blocks."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:     # gone meanwhile
                pass
    return total


def model_in(archive: pathlib.Path, *, scratch: pathlib.Path, inside: str | None,
             space: Scratch | None = None, max_ratio: float = MAX_RATIO) -> pathlib.Path:
    """Unpack `archive` into a new directory under `scratch`, within `space` (default: the free
    space of `scratch`), no member unpacking to more than `max_ratio` times its compressed size;
    the model's file or directory in it."""
    inside = checked_inside(inside, archive=archive.name) if inside else None
    destination = scratch / (archive.name + ".d")
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    budget = Budget(archive.name, room=(space or Scratch(scratch)).room(), max_ratio=max_ratio)
    try:
        if archive.name.lower().endswith(".zip"):
            names = unpack_zip(archive, destination, budget=budget, inside=inside)
        else:
            names = unpack_tar(archive, destination, budget=budget, inside=inside)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)      # nothing half-unpacked is left behind
        raise
    if inside is None:
        return model_root(destination)
    path = (destination / inside).resolve()
    if not path.is_relative_to(destination.resolve()) or not path.exists():
        raise ConversionFailed(f"#{inside} is not in archive {archive.name}; it holds: {listing(names)}")
    return path


def checked_inside(inside: str, *, archive: str) -> str:
    """`inside` normalized ('./a/b/' is 'a/b'; '.' the whole archive), or refused."""
    if inside.startswith("/") or ".." in pathlib.PurePosixPath(inside).parts:
        raise ConversionFailed(f"#{inside} must be a relative path inside archive {archive}, without '..'")
    return pathlib.PurePosixPath(inside).as_posix()


def selected(name: str, inside: str | None) -> bool:
    """Whether member `name` is part of the model at `inside` (every member without one)."""
    if inside in (None, "."):
        return True
    name = pathlib.PurePosixPath(name).as_posix()
    return name == inside or name.startswith(inside + "/")


def check_member(name: str, *, archive: str) -> None:
    if name.startswith("/") or pathlib.PureWindowsPath(name).drive:
        raise ConversionFailed(f"archive {archive} is refused: member {name!r} has an absolute path")
    if ".." in pathlib.PurePosixPath(name.replace("\\", "/")).parts:
        raise ConversionFailed(f"archive {archive} is refused: member {name!r} has a '..' path segment")


class Budget:
    """What an archive may unpack to: MAX_FILES files, MAX_BYTES or the room left, and no member
    more than `max_ratio` times its compressed size."""

    def __init__(self, archive: str, *, room: tuple[int, str], max_ratio: float) -> None:
        self.archive, self.files, self.bytes, self.max_ratio = archive, 0, 0, max_ratio
        left, origin = room
        if MAX_BYTES is not None and MAX_BYTES <= left:
            self.max_bytes, self.origin = MAX_BYTES, " (MODELKILN_ARCHIVE_MAX_BYTES)"
        else:
            self.max_bytes, self.origin = max(left, 0), f", {origin}"

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > MAX_FILES:
            raise ConversionFailed(f"archive {self.archive} is refused: it holds more than {MAX_FILES} members "
                                   "(MODELKILN_ARCHIVE_MAX_FILES)")
        if self.bytes > self.max_bytes:
            raise ConversionFailed(f"archive {self.archive} is refused: it unpacks to more than {self.max_bytes} "
                                   f"bytes{self.origin}")

    def check_ratio(self, member: str, *, unpacked: int, compressed: int) -> None:
        if unpacked > RATIO_GRACE_BYTES and unpacked > self.max_ratio * max(compressed, 1):
            raise ConversionFailed(f"archive {self.archive} is refused: member {member!r} unpacks to more than "
                                   f"{self.max_ratio:g} times its compressed size ({unpacked} bytes from "
                                   f"{compressed}), as an archive bomb does; if it is not one, raise the limit with "
                                   "--max-compression-ratio R (in a cluster, spec.source.maxCompressionRatio)")


class Inflating(io.RawIOBase):
    """The decompressed bytes of a gzip stream, counting what goes in and what comes out, so that
    the member being unpacked is refused the moment it passes the budget's ratio (tarfile's own
    gzip reading cannot tell how much compressed input each member took)."""

    def __init__(self, raw: io.BufferedReader, *, budget: Budget) -> None:
        self.raw, self.budget = raw, budget
        self.inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
        self.pending = b""              # compressed bytes read, not yet decompressed
        self.consumed = self.produced = 0
        self.member, self.start = "", (0, 0)

    def readable(self) -> bool:
        return True

    def begin(self, member: str) -> None:
        """What follows is `member`'s."""
        self.member, self.start = member, (self.consumed, self.produced)

    def readinto(self, buffer) -> int:
        while True:
            if not self.pending:
                self.pending = self.raw.read(COMPRESSED_CHUNK_BYTES)
                if not self.pending:
                    if not self.inflater.eof:
                        raise EOFError("the compressed stream ends before its end marker")
                    return 0
            if self.inflater.eof:       # another gzip member follows (or zero padding)
                self.pending = self.pending.lstrip(b"\0")
                if not self.pending:
                    continue
                self.inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
            before = len(self.pending)
            data = self.inflater.decompress(self.pending, len(buffer))
            self.pending = self.inflater.unused_data if self.inflater.eof else self.inflater.unconsumed_tail
            self.consumed += before - len(self.pending)
            if data:
                self.produced += len(data)
                buffer[:len(data)] = data
                self.budget.check_ratio(self.member, unpacked=self.produced - self.start[1],
                                        compressed=self.consumed - self.start[0])
                return len(data)


def unpack_tar(archive: pathlib.Path, destination: pathlib.Path, *, budget: Budget,
               inside: str | None) -> list[str]:
    """Unpack the members of `archive` under `inside` into `destination`; every file member's name."""
    root = os.path.realpath(destination)
    names = []
    try:
        with archive.open("rb") as raw:
            compressed = raw.peek(2)[:2] == GZIP_MAGIC
            stream = Inflating(raw, budget=budget) if compressed else raw
            # Streaming mode: a .tar.gz is decompressed once, member by member, never held whole.
            with tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_READ_BYTES) as tar:
                for member in tar:
                    if compressed:
                        stream.begin(member.name)
                    if member.isreg():
                        names.append(member.name)
                    if not selected(member.name, inside):
                        continue    # read through (and held to the ratio), not written
                    check_tar_member(member, root=root, archive=archive.name)
                    budget.add(member.size if member.isreg() else 0)
                    member.mode &= 0o755        # no setuid, setgid or world-writable files
                    try:
                        tar.extract(member, destination, **DATA_FILTER)
                    except FILTER_ERRORS as error:
                        raise ConversionFailed(f"archive {archive.name} is refused: {error}") from None
    except (tarfile.ReadError, EOFError, zlib.error) as error:
        raise ConversionFailed(f"archive {archive.name} cannot be read: {error}") from None
    return names


# tarfile's `data` filter (Python 3.11.4+) checks again what check_tar_member does; older 3.11s,
# such as Debian bookworm's, have only the checks here.
DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
FILTER_ERRORS = getattr(tarfile, "FilterError", ())


def check_tar_member(member: tarfile.TarInfo, *, root: str, archive: str) -> None:
    """Refuse `member` unless it lands inside `root` (following the links already unpacked)."""
    check_member(member.name, archive=archive)

    def inside(path: str) -> bool:
        return os.path.commonpath([root, os.path.realpath(os.path.join(root, path))]) == root

    if member.ischr() or member.isblk() or member.isfifo():
        raise ConversionFailed(f"archive {archive} is refused: member {member.name!r} is a device file or pipe")
    if not inside(member.name):
        raise ConversionFailed(f"archive {archive} is refused: member {member.name!r} would be written outside "
                               "the archive's directory (through a link)")
    if member.issym() or member.islnk():
        # a symbolic link is relative to its directory, a hard link to the archive's top
        target = os.path.join(os.path.dirname(member.name) if member.issym() else "", member.linkname)
        if os.path.isabs(member.linkname) or not inside(target):
            raise ConversionFailed(f"archive {archive} is refused: member {member.name!r} is a link to "
                                   f"{member.linkname!r}, outside the archive")


def unpack_zip(archive: pathlib.Path, destination: pathlib.Path, *, budget: Budget,
               inside: str | None) -> list[str]:
    """Unpack the members of `archive` under `inside` into `destination`; every file member's name."""
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = zip_file.infolist()
            for member in members:      # every check before the first byte is written
                check_member(member.filename, archive=archive.name)
                # zipfile never writes more than the declared size, nor reads more than declared
                budget.check_ratio(member.filename, unpacked=member.file_size, compressed=member.compress_size)
                mode = member.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ConversionFailed(f"archive {archive.name} is refused: member {member.filename!r} is a "
                                           "link (links are not unpacked from a zip)")
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):     # 0: written without a type
                    raise ConversionFailed(f"archive {archive.name} is refused: member {member.filename!r} is a "
                                           "device file or pipe")
                if selected(member.filename, inside):
                    budget.add(member.file_size)
            for member in members:
                if selected(member.filename, inside):
                    zip_file.extract(member, destination)
    except zipfile.BadZipFile as error:
        raise ConversionFailed(f"archive {archive.name} cannot be read: {error}") from None
    return [member.filename for member in members if not member.is_dir()]


def model_root(directory: pathlib.Path) -> pathlib.Path:
    """Where the model is: the top, or below directories that hold nothing else (model/...), or the
    highest numbered directory of a TF-Serving layout (1/, 2/ — what TF-Serving would serve)."""
    while True:
        entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
        if any(p.is_file() for p in entries):
            return directory
        if len(entries) == 1:
            directory = entries[0]
        elif entries and all(p.name.isdigit() for p in entries):
            directory = max(entries, key=lambda p: int(p.name))
        else:
            return directory


def listing(names: list[str], limit: int = 10) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "nothing") + more
