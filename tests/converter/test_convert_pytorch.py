"""PyTorch sources: TorchScript (.pt) and torch.export (.pt2), checked against torch itself.

torch is an optional extra (PyPI's build is several GB), so the conversion tests skip without it;
the clear error a user gets without torch is tested where torch is absent.
"""

from __future__ import annotations

import importlib.util
import zipfile

import numpy as np
import pytest

from conftest import metadata, run_ir

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install 'modelkiln[torch]')")


def small_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


@needs_torch
def test_torchscript_model_converts_and_matches_torch(convert, repo, tmp_path):
    import torch

    model = small_cnn()
    source = tmp_path / "cnn.pt"
    torch.jit.trace(model, torch.zeros(1, 3, 16, 16)).save(str(source))
    result = convert("--source", source, "--output", repo / "cnn", "--precision", "FP32",
                     "--input-shape", "1,3,16,16")

    meta = metadata(result.summary["path"])
    assert meta["source"]["format"] == "pytorch" and meta["verification"]["reference"] == "torch"
    image = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(image)).numpy()
    got = run_ir(repo / "cnn" / "1" / "model.xml", {meta["inputs"][0]["name"]: image})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


@needs_torch
def test_torch_export_program_converts_with_its_own_signature(convert, repo, tmp_path):
    import torch

    source = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(small_cnn(), (torch.zeros(1, 3, 16, 16),)), str(source))
    result = convert("--source", source, "--output", repo / "cnn", "--precision", "INT8", "--synthetic-calibration",
                     "--calibration-samples", "20")

    meta = metadata(result.summary["path"])
    assert meta["source"]["format"] == "pytorch" and meta["inputs"][0]["shape"] == [1, 3, 16, 16]
    assert meta["verification"]["reference"] == "torch" and meta["calibration"]["synthetic"] is True


@needs_torch
def test_torchscript_without_input_shape_asks_for_it(convert, repo, tmp_path):
    import torch

    source = tmp_path / "cnn.pt"
    torch.jit.trace(small_cnn(), torch.zeros(1, 3, 16, 16)).save(str(source))
    result = convert("--source", source, "--output", repo / "cnn", "--precision", "FP32")
    assert result.cause.startswith("a TorchScript model has no input signature: pass --input-shape")


@pytest.mark.skipif(HAS_TORCH, reason="checks the message shown where torch is missing")
def test_pytorch_source_without_torch_says_how_to_install_it(convert, repo, tmp_path):
    source = tmp_path / "model.pt"
    with zipfile.ZipFile(source, "w") as archive:      # the layout of a TorchScript archive
        archive.writestr("model/constants.pkl", b"")
        archive.writestr("model/data.pkl", b"")
    result = convert("--source", source, "--output", repo / "m", "--precision", "FP32")
    assert result.cause == "reading a PyTorch model needs the torch extra: pip install 'modelkiln[torch]'"


@needs_torch
def test_torchscript_with_several_named_inputs_keeps_their_names(convert, repo, tmp_path):
    import torch

    class Scaled(torch.nn.Module):
        def forward(self, image, scale):
            return image.mean(dim=(2, 3)) * scale

    source = tmp_path / "scaled.pt"
    torch.jit.script(Scaled()).save(str(source))
    result = convert("--source", source, "--output", repo / "scaled", "--precision", "FP32",
                     "--input-shape", "image=2,3,8,8", "--input-shape", "scale=2,3")

    meta = metadata(result.summary["path"])
    assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [("image", [2, 3, 8, 8]), ("scale", [2, 3])]
    rng = np.random.default_rng(0)
    image, scale = rng.normal(size=(2, 3, 8, 8)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
    got = run_ir(repo / "scaled" / "1" / "model.xml", {"image": image, "scale": scale})[0]
    np.testing.assert_allclose(got, image.mean(axis=(2, 3)) * scale, rtol=1e-5, atol=1e-6)

    swapped = convert("--source", source, "--output", repo / "other", "--precision", "FP32",
                      "--input-shape", "scale=2,3", "--input-shape", "image=2,3,8,8")
    assert [i["name"] for i in metadata(swapped.summary["path"])["inputs"]] == ["image", "scale"]
    wrong = convert("--source", source, "--output", repo / "wrong", "--precision", "FP32",
                    "--input-shape", "x=2,3,8,8")
    assert wrong.cause == "--input-shape names 'x' do not match forward(image, scale): give one shape per argument, by name"
