"""Placeholder expansion, M-RoPE position ids and embedding splicing against transformers."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from autoglm_jax.processing.prompt import (
    IMAGE_END_TOKEN_ID as END,
)
from autoglm_jax.processing.prompt import (
    IMAGE_START_TOKEN_ID as BEGIN,
)
from autoglm_jax.processing.prompt import (
    IMAGE_TOKEN_ID as IMG,
)
from autoglm_jax.processing.prompt import (
    VIDEO_END_TOKEN_ID as VEND,
)
from autoglm_jax.processing.prompt import (
    VIDEO_START_TOKEN_ID as VBEGIN,
)
from autoglm_jax.processing.prompt import (
    expand_image_placeholders,
    get_rope_index,
    make_mm_token_type_ids,
    splice_embeddings,
)

PAD = 151329


@pytest.fixture(scope="module")
def hf_rope():
    """transformers' get_rope_index and create_mm_token_type_ids on a tiny Glm4vModel."""
    from transformers import Glm4vConfig, Glm4vModel, Glm4vProcessor

    cfg = Glm4vConfig(
        vision_config={
            "depth": 1,
            "hidden_size": 8,
            "num_heads": 2,
            "out_hidden_size": 8,
            "intermediate_size": 8,
        },
        text_config={
            "vocab_size": 16,
            "hidden_size": 8,
            "intermediate_size": 8,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
        },
    )
    model = Glm4vModel(cfg).eval()
    fake_processor = types.SimpleNamespace(
        image_token_id=IMG, video_start_id=VBEGIN, video_end_id=VEND
    )

    def run(ids, image_grid=None, video_grid=None, mask=None):
        mm = np.asarray(Glm4vProcessor.create_mm_token_type_ids(fake_processor, ids.tolist()))
        t = lambda x: None if x is None else torch.tensor(np.asarray(x), dtype=torch.long)  # noqa
        pos, delta = model.get_rope_index(
            t(ids),
            t(mm),
            image_grid_thw=t(image_grid),
            video_grid_thw=t(video_grid),
            attention_mask=t(mask),
        )
        return pos.numpy(), delta.numpy(), mm

    return run


def _text(n, start=100):
    return list(range(start, start + n))


def _image(grid):
    return [BEGIN] + [IMG] * (int(np.prod(grid)) // 4) + [END]


def _left_pad(rows):
    length = max(len(r) for r in rows)
    ids = np.array([[PAD] * (length - len(r)) + r for r in rows])
    mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _compare(hf_rope, ids, image_grid=None, video_grid=None, mask=None):
    want_pos, want_delta, mm = hf_rope(ids, image_grid, video_grid, mask)
    np.testing.assert_array_equal(make_mm_token_type_ids(ids), mm)
    pos, delta = get_rope_index(ids, image_grid, mask, video_grid_thw=video_grid)
    assert pos.shape == (3, *ids.shape) and pos.dtype == np.int32
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(delta, want_delta)
    return pos


def test_rope_index_batch_with_two_images_and_left_padding(hf_rope):
    a, b = (1, 4, 6), (1, 6, 2)
    rows = [
        _text(3) + _image(a) + _text(4) + _image(b) + _text(2),  # 2 images, different sizes
        _text(5),
    ]  # 0 images, left padded
    ids, mask = _left_pad(rows)
    pos = _compare(hf_rope, ids, [a, b], mask=mask)
    # Spot-check the layout by hand: image a starts after 3 text tokens + <|begin_of_image|>.
    first = 4
    assert pos[:, 0, first].tolist() == [4, 4, 4]
    assert pos[:, 0, first + 5].tolist() == [4, 5, 6]  # second row of the 2x3 token grid
    assert pos[0, 1].tolist() == [0] * (ids.shape[1] - 5) + [0, 1, 2, 3, 4]


def test_rope_index_one_image_each_without_mask_and_with_mask(hf_rope):
    a, b, c = (1, 2, 10), (1, 8, 8), (1, 2, 2)
    rows = [_text(2) + _image(a) + _text(3), _text(1) + _image(b) + _image(c) + _text(6)]
    ids, mask = _left_pad(rows)
    _compare(hf_rope, ids, [a, b, c], mask=mask)
    _compare(hf_rope, np.array([_text(2) + _image(b) + _text(7)]), [b])  # no attention mask
    _compare(hf_rope, np.array([_text(9)]))  # text only


def test_rope_index_video_frames(hf_rope):
    grid = (2, 4, 4)  # two frames, each its own <|begin_of_image|>...<|end_of_image|>ts block
    frame = _image((1, 4, 4))
    ids = np.array([_text(2) + [VBEGIN] + frame + [300] + frame + [301] + [VEND] + _text(2)])
    _compare(hf_rope, ids, video_grid=[grid])


def test_rope_index_rejects_mismatched_grids():
    ids = np.array([_text(2) + _image((1, 4, 4)) + _text(1)])
    with pytest.raises(ValueError, match="needs t\\*h\\*w/4 = 6"):
        get_rope_index(ids, [(1, 4, 6)])
    with pytest.raises(ValueError, match="more image token runs than image grids"):
        get_rope_index(ids, None)


def test_expand_image_placeholders():
    prompt = _text(2) + [BEGIN, IMG, END] + _text(1) + [BEGIN, IMG, END]
    grids = np.array([[1, 4, 6], [1, 2, 2]])
    out = expand_image_placeholders(prompt, grids)
    want = _text(2) + _image((1, 4, 6)) + _text(1) + _image((1, 2, 2))
    assert out.dtype == np.int32 and out.tolist() == want
    with pytest.raises(ValueError, match="2 image placeholders but 1 images"):
        expand_image_placeholders(prompt, grids[:1])
    with pytest.raises(ValueError, match="not preceded by <\\|begin_of_image\\|>"):
        expand_image_placeholders(_text(2) + [IMG, END], grids[:1])
    with pytest.raises(ValueError, match="not followed by <\\|end_of_image\\|>"):
        expand_image_placeholders([BEGIN, IMG] + _text(1), grids[:1])
    assert expand_image_placeholders(_text(3), None).tolist() == _text(3)


def test_splice_embeddings_matches_masked_scatter():
    rng = np.random.default_rng(0)
    ids = np.array([_text(2) + [IMG] * 3 + _text(1), [PAD] + _text(1) + [IMG] * 2 + _text(2)])
    text = rng.standard_normal((2, 6, 5)).astype(np.float32)
    image = rng.standard_normal((5, 5)).astype(np.float32)
    mask = torch.from_numpy(ids == IMG)[..., None].expand(-1, -1, 5)
    want = torch.from_numpy(text).masked_scatter(mask, torch.from_numpy(image)).numpy()
    got = jax.jit(splice_embeddings, static_argnums=3)(
        jnp.asarray(text), jnp.asarray(image), jnp.asarray(ids), IMG
    )
    np.testing.assert_array_equal(np.asarray(got), want)
    # Bucket padding rows past the image tokens are ignored.
    padded = np.concatenate([image, np.full((3, 5), 99.0, np.float32)])
    np.testing.assert_array_equal(np.asarray(splice_embeddings(text, padded, ids, IMG)), want)
    # No image rows: the text embeddings come back unchanged.
    np.testing.assert_array_equal(
        np.asarray(splice_embeddings(text, np.zeros((0, 5), np.float32), ids, IMG)), text
    )
