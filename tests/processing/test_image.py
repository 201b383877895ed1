"""Image preprocessing against transformers' Glm4vImageProcessorPil, plus loading and errors."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from autoglm_jax.config import ConfigError
from autoglm_jax.processing.image import (
    ImageError,
    ImageProcessorConfig,
    image_processor_config_from_hf,
    load_image,
    process_images,
    smart_resize,
)

# Small pixel bounds keep it fast: at most 2 * 28 * 28 * 40 over both frames (14x10 patches).
CFG = ImageProcessorConfig(min_pixels=2 * 28 * 28, max_pixels=2 * 28 * 28 * 40)


@pytest.fixture(scope="module")
def hf_processor():
    from transformers import Glm4vImageProcessorPil

    return Glm4vImageProcessorPil(
        size={"shortest_edge": CFG.min_pixels, "longest_edge": CFG.max_pixels}
    )


def _rng_image(h, w, mode="RGB", seed=0):
    rng = np.random.default_rng(seed + h * 1000 + w)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _check(ours, ref):
    np.testing.assert_array_equal(ours.image_grid_thw, ref["image_grid_thw"])
    assert ours.image_grid_thw.dtype == np.int32
    assert ours.pixel_values.dtype == np.float32
    assert ours.pixel_values.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(ours.pixel_values, ref["pixel_values"], atol=1e-5, rtol=0)


def test_matches_transformers_on_sizes_and_aspect_ratios(hf_processor):
    # square, tall, wide, upscaled tiny (sides < 28), past max_pixels (downscaled), rounding
    # both ways, a 1x-ish aspect near the limits of the grid.
    sizes = [(56, 56), (100, 37), (37, 250), (20, 90), (1000, 700), (300, 200), (29, 41)]
    images = [_rng_image(h, w) for h, w in sizes]
    ours, ref = process_images(images, CFG), hf_processor(images)
    _check(ours, ref)
    assert ours.image_grid_thw.tolist()[4] == [1, 14, 10]  # 1000x700 was resized down
    assert ours.num_image_tokens() == [int(np.prod(g)) // 4 for g in ours.image_grid_thw]


def test_matches_transformers_on_modes_and_arrays(hf_processor):
    palette = _rng_image(50, 60).convert("P")
    palette.info["transparency"] = 3
    images = [
        _rng_image(60, 80, "RGBA"),
        _rng_image(70, 90, "L"),
        palette,
        np.asarray(_rng_image(90, 50)),
        np.asarray(_rng_image(45, 66, "RGBA")),
    ]
    _check(process_images(images, CFG), hf_processor(images))


def test_smart_resize_matches_transformers():
    from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize as hf_resize

    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(300)]
    sizes += [(28, 28), (27, 5000), (1, 199), (1, 300), (14, 14), (3000, 15)]
    for h, w in sizes:
        kw = dict(
            num_frames=2,
            height=h,
            width=w,
            temporal_factor=2,
            factor=28,
            min_pixels=56 * 56,
            max_pixels=2 * 1000 * 1000,
        )
        try:
            want = hf_resize(**kw)
        except ValueError as e:
            with pytest.raises(ImageError, match="aspect ratio"):
                smart_resize(**kw)
            assert "aspect ratio" in str(e)
            continue
        assert smart_resize(**kw) == want, (h, w)


def test_paths_bytes_and_data_urls_equal_the_pil_image(tmp_path):
    img = _rng_image(64, 48, "RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    (tmp_path / "x.png").write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    want = load_image(img)
    for source in (data, str(tmp_path / "x.png"), tmp_path / "x.png", url):
        np.testing.assert_array_equal(load_image(source), want)
    grids = process_images([data, url], CFG).image_grid_thw
    assert grids.tolist() == [process_images(img, CFG).image_grid_thw.tolist()[0]] * 2


def test_exif_orientation_is_applied_for_encoded_images():
    img = _rng_image(40, 60)  # 60 wide, 40 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).shape == (60, 40, 3)


def test_corrupt_and_truncated_bytes_are_named():
    with pytest.raises(ImageError, match=r"image 1 .*corrupt or unrecognized image data"):
        process_images([_rng_image(30, 30), b"\x89PNG\r\n\x1a\nnot really a png"], CFG)
    buf = io.BytesIO()
    _rng_image(80, 80).save(buf, format="PNG")
    with pytest.raises(ImageError, match="corrupt or unrecognized image data"):
        load_image(buf.getvalue()[:200])
    with pytest.raises(ImageError, match="empty image data"):
        load_image(b"")
    with pytest.raises(ImageError, match="invalid base64"):
        load_image("data:image/png;base64,@@@")


def test_zero_sized_images_are_named():
    with pytest.raises(ImageError, match=r"zero size \(0x10 pixels\)"):
        load_image(Image.new("RGB", (0, 10)))
    with pytest.raises(ImageError, match=r"zero size \(7x0 pixels\)"):
        load_image(np.zeros((0, 7, 3), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        smart_resize(2, 0, 5)


def test_unsupported_inputs_are_named(tmp_path):
    with pytest.raises(ImageError, match="unsupported image mode 'I;16'"):
        load_image(Image.new("I;16", (30, 30)))
    with pytest.raises(ImageError, match="unsupported image mode 'F'"):
        load_image(Image.new("F", (30, 30)))
    with pytest.raises(ImageError, match="must be uint8"):
        load_image(np.zeros((30, 30, 3), np.float32))
    with pytest.raises(ImageError, match="channels last"):
        load_image(np.zeros((30, 30, 2), np.uint8))
    with pytest.raises(ImageError, match="unsupported input type"):
        load_image(12345)
    with pytest.raises(FileNotFoundError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="aspect ratio must be at most 200"):
        process_images(_rng_image(28, 6000), CFG)


def test_config_from_preprocessor_config():
    hf = {
        "size": {"shortest_edge": 12544, "longest_edge": 9800000},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Glm4vImageProcessor",
    }
    cfg = image_processor_config_from_hf(hf)
    assert cfg == ImageProcessorConfig(max_pixels=9800000)
    assert image_processor_config_from_hf({"min_pixels": 100, "max_pixels": 200}).max_pixels == 200
    with pytest.raises(ConfigError, match="preprocessor_config.json: field `min_pixels`"):
        image_processor_config_from_hf({"size": {"shortest_edge": 10, "longest_edge": 5}})
