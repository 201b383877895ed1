"""Host-side GLM-4.1V image preprocessing (numpy + Pillow), matching transformers'
`Glm4vImageProcessorPil`:

1. load (PIL image, numpy uint8 array, file path, bytes or a `data:image/...;base64,` URL) and
   convert to RGB, compositing transparency onto white;
2. `smart_resize`: sides to multiples of 28 keeping the aspect ratio, the pixel count of the two
   temporal frames (2 * h * w) clamped to [min_pixels, max_pixels]; Pillow bicubic resize;
3. rescale by 1/255 and normalize with the OpenAI CLIP mean/std;
4. duplicate to temporal_patch_size (2) frames and cut 14x14 patches, ordered 2x2-merge-block
   major, each flattened as (C, T, 14, 14).

Returns pixel_values f32[P, 1176] and image_grid_thw i32[n, 3] with grid (1, h/14, w/14).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
import os
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from autoglm_jax.config._common import ConfigError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Union[Image.Image, np.ndarray, str, os.PathLike, bytes, bytearray]

# Pillow modes we convert to RGB. 16/32-bit integer and float modes ("I", "I;16", "F", ...)
# are refused: converting them clips to 8 bits, which silently ruins the picture.
_SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


class ImageError(ValueError):
    """An input image cannot be used; the message says which image and why."""


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """Preprocessing settings; defaults are transformers' Glm4vImageProcessor defaults.

    min_pixels / max_pixels bound t * h * w with t = temporal_patch_size (2), as transformers
    does (`size.shortest_edge` / `size.longest_edge` in preprocessor_config.json); a single
    image's own area is therefore bounded by max_pixels / 2.
    """

    min_pixels: int = 112 * 112
    max_pixels: int = 28 * 28 * 15000
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"ImageProcessorConfig: field `{name}`: must be positive, "
                    f"got {getattr(self, name)}"
                )
        if self.min_pixels > self.max_pixels:
            raise ConfigError(
                f"ImageProcessorConfig: field `min_pixels`: {self.min_pixels} is "
                f"larger than max_pixels {self.max_pixels}"
            )
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"ImageProcessorConfig: field `{name}`: expected 3 values")

    @property
    def factor(self) -> int:
        """Image sides become multiples of this (28)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size


def image_processor_config_from_hf(
    cfg: dict[str, Any], *, source: str = "preprocessor_config.json"
) -> ImageProcessorConfig:
    """ImageProcessorConfig from a preprocessor_config.json dict (`size` with shortest_edge /
    longest_edge, or the older top-level min_pixels / max_pixels)."""
    size = cfg.get("size") or {}
    if not isinstance(size, dict):
        raise ConfigError(f"{source}: field `size`: expected an object, got {size!r}")
    defaults = ImageProcessorConfig()
    kwargs: dict[str, Any] = {
        "min_pixels": size.get("shortest_edge", cfg.get("min_pixels", defaults.min_pixels)),
        "max_pixels": size.get("longest_edge", cfg.get("max_pixels", defaults.max_pixels)),
    }
    for name in ("patch_size", "temporal_patch_size", "merge_size", "rescale_factor"):
        if name in cfg:
            kwargs[name] = cfg[name]
    for name in ("image_mean", "image_std"):
        if name in cfg:
            kwargs[name] = tuple(float(v) for v in cfg[name])
    for name in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size"):
        if not isinstance(kwargs.get(name, 1), int) or isinstance(kwargs.get(name, 1), bool):
            raise ConfigError(f"{source}: field `{name}`: expected an int, got {kwargs[name]!r}")
    try:
        return ImageProcessorConfig(**kwargs)
    except ConfigError as e:
        raise ConfigError(str(e).replace("ImageProcessorConfig", source, 1)) from None


def smart_resize(
    num_frames: int,
    height: int,
    width: int,
    temporal_factor: int = 2,
    factor: int = 28,
    min_pixels: int = 112 * 112,
    max_pixels: int = 14 * 14 * 2 * 2 * 2 * 6144,
) -> tuple[int, int]:
    """(height, width) multiples of `factor` near the input's, keeping the aspect ratio, with
    num_frames * h * w within [min_pixels, max_pixels]. A port of transformers' glm4v
    `smart_resize` (same rounding; ImageError where it raises ValueError)."""
    if num_frames < temporal_factor:
        raise ImageError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height <= 0 or width <= 0:
        raise ImageError(f"image has zero size ({width}x{height} pixels)")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    ratio = max(height, width) / min(height, width)
    if ratio > 200:
        raise ImageError(
            f"image aspect ratio must be at most 200, got {ratio} ({width}x{height} "
            f"pixels after scaling small sides up to {factor})"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# ----------------------------------------------------------------------------------------
# Loading.


def _describe(image: Any) -> str:
    if isinstance(image, (bytes, bytearray)):
        return f"<{len(image)} bytes>"
    if isinstance(image, str) and image.startswith("data:"):
        return image[:40] + "..."
    return repr(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__


def _open_bytes(data: bytes, what: str) -> Image.Image:
    if not data:
        raise ImageError(f"{what}: empty image data")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # decode now, so truncated or corrupt data fails here
    except Exception as e:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageError(
            f"{what}: corrupt or unrecognized image data ({type(e).__name__}: {e})"
        ) from None
    return ImageOps.exif_transpose(img)  # as transformers' load_image does for files


def _to_rgb_pil(img: Image.Image, what: str) -> np.ndarray:
    """uint8 [H, W, 3]; transparency composited onto white (transformers' convert_to_rgb)."""
    if img.mode not in _SUPPORTED_MODES:
        raise ImageError(
            f"{what}: unsupported image mode {img.mode!r} "
            f"(supported: {', '.join(sorted(_SUPPORTED_MODES))}); convert it to "
            "8-bit RGB first"
        )
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{what}: image has zero size ({img.width}x{img.height} pixels)")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        img = img.convert("RGB")
    return np.asarray(img)


def _to_rgb_array(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 [H, W] or [H, W, 1|3|4] (channels last) -> uint8 [H, W, 3]."""
    if arr.dtype != np.uint8:
        raise ImageError(f"{what}: numpy images must be uint8 (0..255), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(
            f"{what}: numpy images must have shape [H, W] or [H, W, 1|3|4] "
            f"(channels last), got {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{what}: image has zero size ({arr.shape[1]}x{arr.shape[0]} pixels)")
    c = arr.shape[-1]
    if c == 1:
        return np.repeat(arr, 3, axis=-1)
    if c == 4:  # transformers' numpy path: blend onto white, round
        alpha = arr[..., 3:4] / 255
        return np.round(alpha * arr[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def load_image(image: ImageInput, index: int = 0) -> np.ndarray:
    """Any supported input as uint8 RGB [H, W, 3]. Raises ImageError (FileNotFoundError for a
    missing path) with a message naming the image."""
    what = f"image {index} ({_describe(image)})"
    if isinstance(image, Image.Image):
        return _to_rgb_pil(image, what)
    if isinstance(image, np.ndarray):
        return _to_rgb_array(image, what)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _to_rgb_pil(_open_bytes(bytes(image), what), what)
    if isinstance(image, str) and image.startswith("data:"):
        header, _, payload = image.partition(",")
        if ";base64" not in header:
            raise ImageError(f"{what}: only base64 data URLs are supported")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"{what}: invalid base64 payload ({e})") from None
        return _to_rgb_pil(_open_bytes(data, what), what)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what}: no such image file")
        with open(path, "rb") as f:
            return _to_rgb_pil(_open_bytes(f.read(), what), what)
    raise ImageError(
        f"{what}: unsupported input type {type(image).__name__} (expected a PIL "
        "image, a uint8 numpy array, a file path, bytes or a data URL)"
    )


# ----------------------------------------------------------------------------------------
# Processing.


@dataclasses.dataclass(frozen=True)
class ProcessedImages:
    pixel_values: np.ndarray  # f32[P, 1176] patches of all images, in order
    image_grid_thw: np.ndarray  # i32[n, 3] (t, h, w) in patches per image

    def num_image_tokens(self, merge_size: int = 2) -> list[int]:
        """`<|image|>` tokens per image: t * h * w / merge_size^2."""
        return [int(n) // merge_size**2 for n in self.image_grid_thw.prod(axis=1)]


def resized_size(
    height: int, width: int, config: ImageProcessorConfig = ImageProcessorConfig()
) -> tuple[int, int]:
    """The (height, width) an image of this size is resized to."""
    return smart_resize(
        config.temporal_patch_size,
        height,
        width,
        temporal_factor=config.temporal_patch_size,
        factor=config.factor,
        min_pixels=config.min_pixels,
        max_pixels=config.max_pixels,
    )


def patchify(image: np.ndarray, config: ImageProcessorConfig) -> tuple[np.ndarray, int, int]:
    """f32 [C, H, W] -> (f32[gh*gw, C*T*p*p], gh, gw) in HF's merge-block-major order."""
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    c, h, w = image.shape
    gh, gw = h // p, w // p
    x = image.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return x.reshape(gh * gw, c * t * p * p), gh, gw


def process_image_array(
    rgb: np.ndarray, config: ImageProcessorConfig
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """uint8 RGB [H, W, 3] -> (f32[patches, 1176], (1, gh, gw))."""
    height, width = rgb.shape[:2]
    rh, rw = resized_size(height, width, config)
    resized = Image.fromarray(rgb).resize((rw, rh), resample=Image.Resampling.BICUBIC)
    x = np.asarray(resized).transpose(2, 0, 1)  # [C, H, W]
    # Same arithmetic as transformers: rescale in float64, store float32, normalize in float32.
    x = (x.astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.asarray(config.image_mean, np.float32)[:, None, None]
    std = np.asarray(config.image_std, np.float32)[:, None, None]
    x = (x - mean) / std
    patches, gh, gw = patchify(x, config)
    return patches, (1, gh, gw)


def process_images(
    images: ImageInput | Sequence[ImageInput], config: ImageProcessorConfig | None = None
) -> ProcessedImages:
    """Preprocess one image or a list of images into the vision tower's inputs."""
    config = config or ImageProcessorConfig()
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ImageError("no images given")
    patches, grids = [], []
    for i, image in enumerate(images):
        rgb = load_image(image, index=i)
        try:
            p, thw = process_image_array(rgb, config)
        except ImageError as e:
            raise ImageError(f"image {i} ({_describe(image)}): {e}") from None
        patches.append(p)
        grids.append(thw)
    return ProcessedImages(
        np.concatenate(patches, axis=0).astype(np.float32, copy=False), np.asarray(grids, np.int32)
    )
