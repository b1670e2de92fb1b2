"""Archive sources (.tar.gz, .tgz, .tar, .zip): the model found inside, and every unsafe archive refused."""

from __future__ import annotations

import io
import pathlib
import stat
import tarfile
import zipfile

import pytest

from conftest import DIGITS, metadata, version_dirs, wide_linear

MODEL_BYTES = (DIGITS / "model.onnx").read_bytes()


def make_tar(path: pathlib.Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> pathlib.Path:
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for member, data in members:
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname, member.mode = kind, linkname, 0o644
    return member


@pytest.fixture
def two_versions(tmp_path) -> bytes:
    """The TF-Serving layout SageMaker archives use: 1/ (a wide linear model) and 2/ (digits)."""
    return wide_linear(tmp_path / "wide.onnx", inputs=4, outputs=8).read_bytes()


def input_names(result) -> list[str]:
    return [port["name"] for port in metadata(result.summary["path"])["inputs"]]


@pytest.mark.parametrize("name", ["model.tar.gz", "model.tgz", "model.tar"])
def test_a_sagemaker_archive_serves_its_highest_version_directory(convert, repo, tmp_path, two_versions, name):
    archive = make_tar(tmp_path / name, [(entry("1/model.onnx"), two_versions), (entry("2/model.onnx"), MODEL_BYTES)])
    result = convert("--source", archive, "--output", repo / "m", "--precision", "FP32")
    assert input_names(result) == ["input"]     # digits, from 2/
    assert metadata(result.summary["path"])["source"]["uri"] == str(archive)


def test_a_fragment_names_the_model_inside(convert, repo, tmp_path, two_versions):
    archive = make_tar(tmp_path / "model.tar.gz", [(entry("1/model.onnx"), two_versions),
                                                   (entry("2/model.onnx"), MODEL_BYTES)])
    result = convert("--source", f"file://{archive}#1/model.onnx", "--output", repo / "m", "--precision", "FP32")
    assert input_names(result) == ["x"]
    missing = convert("--source", f"{archive}#3/model.onnx", "--output", repo / "m", "--precision", "FP32")
    assert missing.cause == "#3/model.onnx is not in archive model.tar.gz; it holds: 1/model.onnx, 2/model.onnx"


def test_a_zip_with_a_model_in_one_directory_is_unpacked(convert, repo, tmp_path):
    with zipfile.ZipFile(tmp_path / "digits.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("digits/model.onnx", MODEL_BYTES)
    result = convert("--source", tmp_path / "digits.zip", "--output", repo / "m", "--precision", "FP32")
    assert input_names(result) == ["input"]


def test_an_archive_on_a_claim_is_unpacked_into_scratch_not_the_claim(convert, repo, tmp_path):
    claim = tmp_path / "pvc" / "uploads"
    claim.mkdir(parents=True)
    make_tar(claim / "model.tar.gz", [(entry("model.onnx"), MODEL_BYTES)])
    result = convert("--source", "pvc://uploads/model.tar.gz", "--output", repo / "m", "--precision", "FP32",
                     env={"MODELKILN_PVC_ROOT": str(tmp_path / "pvc")})
    assert input_names(result) == ["input"]
    assert sorted(p.name for p in claim.iterdir()) == ["model.tar.gz"]


def tar_attack(kind: str, tmp_path: pathlib.Path) -> pathlib.Path:
    outside = str(tmp_path / "escaped")
    members = {
        "absolute": [(entry(outside), MODEL_BYTES)],
        "dotdot": [(entry("model/../../escaped"), MODEL_BYTES)],
        "symlink": [(entry("model.onnx", tarfile.SYMTYPE, "../../../escaped"), None)],
        "absolute-symlink": [(entry("model.onnx", tarfile.SYMTYPE, outside), None)],
        # textually inside, but d is the archive's top: d/.. is above it
        "link-through-link": [(entry("d", tarfile.SYMTYPE, "."), None),
                              (entry("model.onnx", tarfile.SYMTYPE, "d/../escaped"), None)],
        "hardlink": [(entry("model.onnx", tarfile.LNKTYPE, outside), None)],
        "device": [(entry("model.onnx", tarfile.CHRTYPE), None)],
        "fifo": [(entry("model.onnx", tarfile.FIFOTYPE), None)],
        "files": [(entry(f"part-{i}"), b"x") for i in range(6)],
        "bytes": [(entry("model.onnx"), MODEL_BYTES)],
    }[kind]
    return make_tar(tmp_path / "model.tar.gz", members)


def zip_attack(kind: str, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if kind == "symlink":
            link = zipfile.ZipInfo("model.onnx")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(link, "../../escaped")
        elif kind == "device":
            device = zipfile.ZipInfo("model.onnx")
            device.external_attr = (stat.S_IFCHR | 0o644) << 16
            archive.writestr(device, "")
        elif kind == "bytes":     # over a budget of 4096 bytes (bombs: test_convert_archive_bombs.py)
            archive.writestr("model.onnx", MODEL_BYTES)
        else:
            archive.writestr({"absolute": str(tmp_path / "escaped"), "dotdot": "../../escaped"}[kind], MODEL_BYTES)
    return path


ATTACKS = [
    (tar_attack, "absolute", "member '{outside}' has an absolute path"),
    (tar_attack, "dotdot", "member 'model/../../escaped' has a '..' path segment"),
    (tar_attack, "symlink", "member 'model.onnx' is a link to '../../../escaped', outside the archive"),
    (tar_attack, "absolute-symlink", "member 'model.onnx' is a link to '{outside}', outside the archive"),
    (tar_attack, "link-through-link", "member 'model.onnx' is a link to 'd/../escaped', outside the archive"),
    (tar_attack, "hardlink", "member 'model.onnx' is a link to '{outside}', outside the archive"),
    (tar_attack, "device", "member 'model.onnx' is a device file or pipe"),
    (tar_attack, "fifo", "member 'model.onnx' is a device file or pipe"),
    (tar_attack, "files", "it holds more than 5 members (MODELKILN_ARCHIVE_MAX_FILES)"),
    (tar_attack, "bytes", "it unpacks to more than 4096 bytes (MODELKILN_ARCHIVE_MAX_BYTES)"),
    (zip_attack, "absolute", "member '{outside}' has an absolute path"),
    (zip_attack, "dotdot", "member '../../escaped' has a '..' path segment"),
    (zip_attack, "symlink", "member 'model.onnx' is a link (links are not unpacked from a zip)"),
    (zip_attack, "device", "member 'model.onnx' is a device file or pipe"),
    (zip_attack, "bytes", "it unpacks to more than 4096 bytes (MODELKILN_ARCHIVE_MAX_BYTES)"),
]


@pytest.mark.parametrize("build, kind, expected", ATTACKS, ids=[f"{b.__name__}-{k}" for b, k, _ in ATTACKS])
def test_an_unsafe_archive_is_refused_in_one_line_leaving_nothing_behind(convert, repo, tmp_path, build, kind,
                                                                         expected):
    archive = build(kind, tmp_path)
    result = convert("--source", archive, "--output", repo / "m", "--precision", "FP32",
                     env={"MODELKILN_ARCHIVE_MAX_FILES": "5", "MODELKILN_ARCHIVE_MAX_BYTES": "4096"})
    assert result.returncode == 1
    assert result.cause == f"archive {archive.name} is refused: " + expected.format(outside=tmp_path / "escaped")
    assert version_dirs(repo / "m") == []           # no version, no staging, no unpacked files
    assert not (tmp_path / "escaped").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "repo" and "termination-log" not in p.name] \
        == [archive.name]


def test_a_corrupt_archive_is_reported_as_unreadable(convert, repo, tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))
    result = convert("--source", archive, "--output", repo / "m", "--precision", "FP32")
    assert result.cause.startswith("archive model.tar.gz cannot be read: ")
