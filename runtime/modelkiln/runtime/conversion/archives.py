"""Models packed in an archive: .tar.gz, .tgz, .tar or .zip (SageMaker's model.tar.gz first).

The archive is unpacked into the download directory (the Job's scratch space) and the model is
found inside as in a directory source, or named by a `#path/inside` fragment of the URI. An
archive is untrusted input: a member with an absolute path or a '..' segment, a link that leaves
the archive, a device file or pipe, and more files or bytes than the budget (an archive bomb)
are each refused with a one-line cause, and the partly unpacked tree is removed. Each tar member
is checked before it is written, against the tree unpacked so far (links followed), and tarfile's
`data` filter checks it again where Python has it; a path the filter would quietly rewrite (a
leading '/') is refused. The budget is counted from the members' declared sizes, which tar and
zip both honour when extracting.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import stat
import tarfile
import zipfile
import zlib

from modelkiln.runtime.conversion.errors import ConversionFailed

SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Generous for models (a large LLM is tens of GB), tunable for a smaller scratch volume.
MAX_BYTES = int(os.environ.get("MODELKILN_ARCHIVE_MAX_BYTES", str(64 << 30)))
MAX_FILES = int(os.environ.get("MODELKILN_ARCHIVE_MAX_FILES", "10000"))


def is_archive(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def split_inside(uri: str) -> tuple[str, str | None]:
    """`uri` without a `#path/inside` fragment that follows an archive name, and that path."""
    base, hash_sign, inside = uri.rpartition("#")
    if hash_sign and is_archive(base.partition("?")[0]):
        return base, inside
    return uri, None


def model_in(archive: pathlib.Path, *, scratch: pathlib.Path, inside: str | None) -> pathlib.Path:
    """Unpack `archive` into a new directory under `scratch`; the model's file or directory in it."""
    destination = scratch / (archive.name + ".d")
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    try:
        if archive.name.lower().endswith(".zip"):
            unpack_zip(archive, destination)
        else:
            unpack_tar(archive, destination)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)      # nothing half-unpacked is left behind
        raise
    if inside:
        return path_inside(destination, inside=inside, archive=archive.name)
    return model_root(destination)


def check_member(name: str, *, archive: str) -> None:
    if name.startswith("/") or pathlib.PureWindowsPath(name).drive:
        raise ConversionFailed(f"archive {archive} is refused: member {name!r} has an absolute path")
    if ".." in pathlib.PurePosixPath(name.replace("\\", "/")).parts:
        raise ConversionFailed(f"archive {archive} is refused: member {name!r} has a '..' path segment")


class Budget:
    def __init__(self, archive: str) -> None:
        self.archive, self.files, self.bytes = archive, 0, 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > MAX_FILES:
            raise ConversionFailed(f"archive {self.archive} is refused: it holds more than {MAX_FILES} members "
                                   "(MODELKILN_ARCHIVE_MAX_FILES)")
        if self.bytes > MAX_BYTES:
            raise ConversionFailed(f"archive {self.archive} is refused: it unpacks to more than {MAX_BYTES} bytes "
                                   "(MODELKILN_ARCHIVE_MAX_BYTES)")


def unpack_tar(archive: pathlib.Path, destination: pathlib.Path) -> None:
    budget = Budget(archive.name)
    root = os.path.realpath(destination)
    try:
        # Streaming mode: a .tar.gz is decompressed once, member by member, never held whole.
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                check_tar_member(member, root=root, archive=archive.name)
                budget.add(member.size if member.isreg() else 0)
                member.mode &= 0o755        # no setuid, setgid or world-writable files
                try:
                    tar.extract(member, destination, **DATA_FILTER)
                except FILTER_ERRORS as error:
                    raise ConversionFailed(f"archive {archive.name} is refused: {error}") from None
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ConversionFailed(f"archive {archive.name} cannot be read: {error}") from None


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


def unpack_zip(archive: pathlib.Path, destination: pathlib.Path) -> None:
    budget = Budget(archive.name)
    try:
        with zipfile.ZipFile(archive) as zip_file:
            members = zip_file.infolist()
            for member in members:      # every check before the first byte is written
                check_member(member.filename, archive=archive.name)
                mode = member.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ConversionFailed(f"archive {archive.name} is refused: member {member.filename!r} is a "
                                           "link (links are not unpacked from a zip)")
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):     # 0: written without a type
                    raise ConversionFailed(f"archive {archive.name} is refused: member {member.filename!r} is a "
                                           "device file or pipe")
                budget.add(member.file_size)     # zipfile never writes more than the declared size
            for member in members:
                zip_file.extract(member, destination)
    except zipfile.BadZipFile as error:
        raise ConversionFailed(f"archive {archive.name} cannot be read: {error}") from None


def path_inside(destination: pathlib.Path, *, inside: str, archive: str) -> pathlib.Path:
    if inside.startswith("/") or ".." in pathlib.PurePosixPath(inside).parts:
        raise ConversionFailed(f"#{inside} must be a relative path inside archive {archive}, without '..'")
    path = (destination / inside).resolve()
    if not path.is_relative_to(destination.resolve()) or not path.exists():
        raise ConversionFailed(f"#{inside} is not in archive {archive}; it holds: {listing(destination)}")
    return path


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


def listing(directory: pathlib.Path, limit: int = 10) -> str:
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(names[:limit]) or "nothing") + more
