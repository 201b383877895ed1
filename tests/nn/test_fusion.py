"""CGA fusion: exact identity at initialisation, memory K/V precomputation, memory masks and
row assignment, a flat token batch of several requests, one block against a numpy reference,
and one optimizer step that makes audio matter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import autoglm_jax as ag
from autoglm_jax.families import example_inputs
from autoglm_jax.nn.fusion import CgaBlock, place_in_rows, slots_per_row
from autoglm_jax.nn.glm import GlmDecoder
from autoglm_jax.nn.model import (
    AutoGLM,
    encode_memory,
    init_fusion_params,
    memory_kv,
    memory_pool,
    request_memory,
)

# What the engine runs once per request (config and row count static).
encode = jax.jit(encode_memory, static_argnums=(0, 2))
compute_memory_kv = jax.jit(memory_kv, static_argnums=0)

# tiny-mm without the vision tower and ViT, audio windows of 24 frames (12 positions, 3 memory
# tokens after stacking 4 to 1), a CGA block after each of the 2 decoder layers.
_MM = ag.load_config("tiny-mm")
CFG = _MM.replace(
    vision=None,
    vit=None,
    text=_MM.text.replace(num_layers=2),
    audio=_MM.audio.replace(num_layers=1, max_source_positions=12),
    fusion=_MM.fusion.replace(cga_every=1),
)
FRAMES = CFG.audio.num_frames
T = 9


def random_params(config, seed=0):
    """Random weights of every stack (numpy, no compilation) and fresh fusion weights."""
    module = AutoGLM(config)
    args = example_inputs(config)
    shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"])
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda s: jnp.asarray(
            rng.standard_normal(s.shape).astype(np.float32)
            / np.sqrt(s.shape[0] if len(s.shape) > 1 else 4.0)
        ),
        shapes,
    )
    key = jax.random.key(seed, impl="rbg")
    fusion = jax.jit(init_fusion_params, static_argnums=0)(config, key)
    params["fusion"] = nn.unbox(fusion)
    return params


def set_alphas(params, value):
    def one(path, x):
        return jnp.full_like(x, value) if path[-1].key.endswith("_alpha") else x

    return {**params, "fusion": jax.tree_util.tree_map_with_path(one, params["fusion"])}


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


def ids_batch(batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, 491, (batch, T)).astype(np.int32)


def audio(n, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 80, FRAMES)).astype(np.float32)


MODEL = AutoGLM(CFG)


@jax.jit
def base_logits(params, ids):
    return GlmDecoder(CFG.text).apply({"params": params["language_model"]}, ids)


@jax.jit
def fused_logits(params, ids, feats):
    return MODEL.apply({"params": params}, ids, input_features=feats)  # one window per row


def test_fresh_gates_are_zero(params):
    blocks = [v for k, v in params["fusion"].items() if k.startswith("blocks_")]
    assert len(blocks) == CFG.fusion.num_blocks(CFG.text.num_layers) == 2
    for block in blocks:
        for name in ("attn_alpha", "mlp_alpha"):
            assert block[name].shape == (len(CFG.modalities),)
            np.testing.assert_array_equal(block[name], 0.0)
        assert np.abs(block["attn_gate"]).max() > 0 and np.abs(block["q_proj"]["kernel"]).max() > 0


def test_initial_gates_leave_the_decoder_exactly_unchanged(params):
    ids = ids_batch()
    base = np.asarray(base_logits(params, ids))
    for seed in (1, 2):
        np.testing.assert_array_equal(np.asarray(fused_logits(params, ids, audio(2, seed))), base)
    # ... while non-zero gates let audio through.
    moved = np.asarray(fused_logits(set_alphas(params, 0.5), ids, audio(2)))
    assert np.abs(moved - base).max() > 1e-3


def test_precomputed_memory_kv_matches_the_inline_forward(params):
    p = set_alphas(params, 0.5)
    ids, feats = ids_batch(), audio(2)
    inline = np.asarray(fused_logits(p, ids, feats))
    memory = encode(CFG, p, 2, feats)
    assert memory.tokens.shape == (2, FRAMES // 2 // CFG.fusion.audio_stack, CFG.text.d_model)
    mkv = compute_memory_kv(CFG, p, memory)
    assert len(mkv.k) == 2 and mkv.k[0].shape == (
        2,
        3,
        CFG.fusion.num_kv_heads,
        CFG.fusion.head_dim,
    )
    out = jax.jit(lambda p, ids, m: MODEL.apply({"params": p}, ids, memory=m))(p, ids, mkv)
    np.testing.assert_allclose(np.asarray(out), inline, atol=1e-5, rtol=0)


def test_rows_without_audio_padded_slots_and_row_assignment(params):
    p = set_alphas(params, 0.7)
    ids, feats = ids_batch(), audio(2)
    base = np.asarray(base_logits(p, ids))

    @jax.jit
    def run(p, ids, feats):
        # Window 0 -> row 1, window 1 unused; 3 slots per row, so row 1 has 2 padded windows.
        return MODEL.apply(
            {"params": p},
            ids,
            input_features=feats,
            audio_rows=np.asarray([1, -1]),
            max_audio_per_row=3,
        )

    out = np.asarray(run(p, ids, feats))
    np.testing.assert_allclose(out[0], base[0], atol=1e-6, rtol=0)  # row 0 has no audio
    assert np.abs(out[1] - base[1]).max() > 1e-3
    # Row 1 equals that row alone with just its window (no padding slots at all).
    alone = np.asarray(
        jax.jit(lambda p, ids, f: MODEL.apply({"params": p}, ids, input_features=f))(
            p, ids[1:], feats[:1]
        )
    )
    np.testing.assert_allclose(out[1], alone[0], atol=1e-5, rtol=0)


def test_place_in_rows_orders_windows_per_row():
    enc = jnp.arange(4 * 2 * 1, dtype=jnp.float32).reshape(4, 2, 1)  # 4 inputs of 2 tokens
    tokens, valid = place_in_rows(enc, np.asarray([1, 0, 1, -1]), num_rows=2, slots=2)
    np.testing.assert_array_equal(tokens[..., 0], [[2, 3, 0, 0], [0, 1, 4, 5]])
    np.testing.assert_array_equal(valid, [[1, 1, 0, 0], [1, 1, 1, 1]])
    assert slots_per_row(np.asarray([1, 0, 1, -1]), 4, 2, None) == 2
    with pytest.raises(ValueError, match="configured maximum is 1"):
        slots_per_row(np.asarray([1, 0, 1, -1]), 4, 2, None, limit=1, what="audio windows")
    with pytest.raises(ValueError, match="rows must be in"):
        slots_per_row(np.asarray([2, 0, 1, -1]), 4, 2, None)
    with pytest.raises(ValueError, match="holds 1 per row"):
        slots_per_row(np.asarray([1, 0, 1, -1]), 4, 2, 1)


def test_flat_token_batch_with_memory_rows_matches_per_row(params):
    """The engine's layout: several requests' tokens in one row, each mapped to its memory."""
    p = set_alphas(params, 0.6)
    ids, feats = ids_batch(), audio(2)
    per_row = np.asarray(fused_logits(p, ids, feats))
    mkv = compute_memory_kv(CFG, p, encode(CFG, p, 2, feats))
    flat_ids = ids.reshape(1, 2 * T)
    positions = np.tile(np.arange(T, dtype=np.int32), 2)[None]
    segments = np.repeat(np.arange(1, 3, dtype=np.int32), T)[None]
    rows = np.repeat(np.arange(2, dtype=np.int32), T)[None]
    flat = jax.jit(
        lambda p, m: MODEL.apply(
            {"params": p}, flat_ids, positions, memory=m, memory_rows=rows, segment_ids=segments
        )
    )(p, mkv)
    np.testing.assert_allclose(np.asarray(flat).reshape(2, T, -1), per_row, atol=1e-5, rtol=0)


def test_memory_pool_rows_serve_each_slots_request(params):
    """The engine's pool: each slot's row holds its request's memory (an empty row: none), and
    a flat batch of several requests reads its rows through memory_rows."""
    p = set_alphas(params, 0.6)
    ids, feats = ids_batch(), audio(2)
    per_row = np.asarray(fused_logits(p, ids, feats))
    base = np.asarray(base_logits(p, ids))
    pool = memory_pool(CFG, p, 3)
    assert pool.k[0].shape[0] == 3 and not np.asarray(pool.valid).any()
    frames = np.full((1,), FRAMES, np.int32)
    pool = pool.with_row(2, request_memory(CFG, p, feats[:1], frames))
    pool = pool.with_row(0, request_memory(CFG, p, feats[1:], frames))
    pool = pool.with_row(1, request_memory(CFG, p, feats[:1], frames)).with_row(1, None)
    flat_ids = np.concatenate([ids[0], ids[1], ids[0]])[None]
    positions = np.tile(np.arange(T, dtype=np.int32), 3)[None]
    segments = np.repeat(np.arange(1, 4, dtype=np.int32), T)[None]
    rows = np.repeat(np.array([2, 0, 1], np.int32), T)[None]
    flat = jax.jit(
        lambda p, m: MODEL.apply(
            {"params": p}, flat_ids, positions, memory=m, memory_rows=rows, segment_ids=segments
        )
    )(p, pool)
    want = np.stack([per_row[0], per_row[1], base[0]])
    np.testing.assert_allclose(np.asarray(flat).reshape(3, T, -1), want, atol=1e-5, rtol=0)


def test_embed_step_splices_image_rows_by_index(params):
    ids = ids_batch(1)
    rows = np.random.default_rng(3).standard_normal((4, CFG.text.d_model)).astype(np.float32)
    index = np.full((1, T), -1, np.int32)
    index[0, [2, 5]] = [3, 0]
    text = np.asarray(MODEL.apply({"params": params}, ids, method="embed_step"))
    got = np.asarray(MODEL.apply({"params": params}, ids, rows, index, method="embed_step"))
    want = text.copy()
    want[0, 2], want[0, 5] = rows[3], rows[0]
    np.testing.assert_array_equal(got, want)


def _reference_block(prm, h, mem, valid, modality, cfg):
    """numpy CGA block, written from the formula (loops over rows, tokens, heads)."""
    f, eps = cfg.fusion, cfg.fusion.rms_norm_eps
    prm = jax.tree.map(lambda x: np.asarray(x, np.float64), prm)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def sig(x):
        return 1 / (1 + np.exp(-x))

    e_count, g = len(cfg.modalities), f.num_heads // f.num_kv_heads
    out = np.array(h, np.float64)
    for b in range(h.shape[0]):
        m = rms(mem[b], prm["memory_norm"]["scale"])
        k = np.einsum("sd,dkh->skh", m, prm["k_proj"]["kernel"])
        v = np.einsum("sd,dkh->skh", m, prm["v_proj"]["kernel"])
        for t in range(h.shape[1]):
            x = rms(h[b, t], prm["query_norm"]["scale"])
            q = np.einsum("d,dnh->nh", x, prm["q_proj"]["kernel"])
            mix = np.zeros_like(q)
            present = np.zeros(e_count)
            for e in range(e_count):
                slots = np.flatnonzero(valid[b] & (modality == e))
                if not slots.size:
                    continue
                present[e] = 1
                gate = np.tanh(prm["attn_alpha"][e]) * sig(x @ prm["attn_gate"][:, e])
                for n in range(f.num_heads):
                    s = k[slots, n // g] @ q[n] / np.sqrt(f.head_dim)
                    w = np.exp(s - s.max())
                    mix[n] += gate * (w / w.sum()) @ v[slots, n // g]
            y = out[b, t] + np.einsum("nh,nhd->d", mix, prm["o_proj"]["kernel"])
            z = rms(y, prm["mlp_norm"]["scale"])
            gu = np.einsum("d,dcf->cf", z, prm["gate_up_proj"]["kernel"])
            mlp = (gu[0] * sig(gu[0]) * gu[1]) @ prm["down_proj"]["kernel"]
            g2 = sum(
                present[e] * np.tanh(prm["mlp_alpha"][e]) * sig(z @ prm["mlp_gate"][:, e])
                for e in range(e_count)
            )
            out[b, t] = y + g2 * mlp
    return out


def test_cga_block_matches_a_numpy_reference():
    # Two modalities, GQA with 2 query heads per KV head; row 1 has no slot of modality 1.
    cfg = _MM.replace(fusion=_MM.fusion.replace(num_heads=4, num_kv_heads=2))
    block = CgaBlock(cfg)
    rng = np.random.default_rng(3)
    d = cfg.text.d_model
    h = rng.standard_normal((2, 3, d)).astype(np.float32)
    mem = rng.standard_normal((2, 5, d)).astype(np.float32)
    valid = np.asarray([[1, 1, 0, 1, 1], [1, 0, 1, 0, 0]], bool)
    modality = np.asarray([0, 0, 0, 1, 1], np.int32)

    def call(mdl, h, mem):
        k, v = mdl.kv(mem)
        return mdl(h, k, v, jnp.asarray(valid), jnp.asarray(modality))

    shapes = nn.unbox(jax.eval_shape(lambda: nn.init(call, block)(jax.random.key(0), h, mem)))
    prm = jax.tree.map(
        lambda s: jnp.asarray(
            rng.standard_normal(s.shape).astype(np.float32) * (0.3 if len(s.shape) > 1 else 1.0)
        ),
        shapes["params"],
    )
    out = jax.jit(nn.apply(call, block))({"params": prm}, h, mem)
    ref = _reference_block(prm, h, mem, valid, modality, cfg)
    assert np.abs(ref - h).max() > 0.1
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-4, rtol=1e-4)


def test_one_adam_step_moves_the_gates_and_audio_changes_logits(params):
    """Predict a token that only the audio clip determines: clip 0 -> token 7, clip 1 -> 11."""
    ids = np.repeat(ids_batch(1), 2, axis=0)  # the same text in both rows
    feats = audio(2, seed=5)  # a different clip per row
    targets = np.asarray([7, 11])

    def loss_fn(fusion, base):
        logits = MODEL.apply({"params": {**base, "fusion": fusion}}, ids, input_features=feats)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, -1], targets).mean()

    base = {k: v for k, v in params.items() if k != "fusion"}
    opt = optax.adam(0.1)
    state = opt.init(params["fusion"])

    @jax.jit
    def step(fusion, state):
        loss, grads = jax.value_and_grad(loss_fn)(fusion, base)
        updates, state = opt.update(grads, state, fusion)
        return optax.apply_updates(fusion, updates), state, loss, grads

    before = np.asarray(fused_logits(params, ids, feats))[:, -1]
    np.testing.assert_array_equal(before[0], before[1])  # gates at 0: the audio is not seen
    fusion1, state1, loss0, grads = step(params["fusion"], state)
    block = grads["blocks_0"]
    assert np.abs(block["attn_alpha"]).max() > 0  # only the gates get a gradient at alpha = 0
    np.testing.assert_array_equal(block["q_proj"]["kernel"], 0.0)
    for name in ("blocks_0", "blocks_1"):
        assert np.abs(np.asarray(fusion1[name]["attn_alpha"])).min() > 0.05
    after = {**base, "fusion": fusion1}
    logits = np.asarray(fused_logits(after, ids, feats))[:, -1]
    assert np.abs(logits[0] - logits[1]).max() > 1e-4  # same text, different audio
    swapped = np.asarray(fused_logits(after, ids, feats[::-1]))[:, -1]
    np.testing.assert_allclose(swapped, logits[::-1], atol=1e-5)
    _, _, loss1, _ = step(fusion1, state1)  # the loss at fusion1 (same compiled step)
    assert float(loss1) < float(loss0)


def test_audio_frames_keep_the_blocks_off_the_window_padding(params):
    """A clip of 8 of the window's 24 frames fills 4 of its 12 Whisper positions, so 1 of the
    3 stacked memory slots; what the other slots hold cannot change the output."""
    from autoglm_jax.nn.fusion import Memory, audio_slot_valid
    from autoglm_jax.processing.audio import window_frames

    np.testing.assert_array_equal(window_frames(16_000), [100])  # 1 s: 100 frames
    np.testing.assert_array_equal(window_frames(45 * 16_000), [3000, 1500])
    np.testing.assert_array_equal(window_frames(1), [1])
    np.testing.assert_array_equal(
        audio_slot_valid(jnp.array([8, 9, 24, 0]), 3, 4),
        [[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]],
    )
    p = set_alphas(params, 1.0)
    ids, feats = ids_batch(), audio(2)
    frames = jnp.array([8, 24], jnp.int32)
    encode_frames = jax.jit(
        lambda p, f, n: MODEL.apply({"params": p}, 2, f, audio_frames=n, method="encode_memory")
    )
    memory = encode_frames(p, feats, frames)
    np.testing.assert_array_equal(memory.valid, [[1, 0, 0], [1, 1, 1]])
    noise = jnp.asarray(
        np.random.default_rng(5).standard_normal(memory.tokens.shape), memory.tokens.dtype
    )
    scrambled = Memory(
        jnp.where(memory.valid[..., None], memory.tokens, noise), memory.valid, memory.modality
    )
    run = jax.jit(lambda p, ids, m: MODEL.apply({"params": p}, ids, memory=m))
    a = run(p, ids, compute_memory_kv(CFG, p, memory))
    b = run(p, ids, compute_memory_kv(CFG, p, scrambled))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the frames do change what row 0 attends to (the full window differs)
    full = run(p, ids, compute_memory_kv(CFG, p, encode(CFG, p, 2, feats)))
    assert np.abs(np.asarray(full)[0] - np.asarray(a)[0]).max() > 1e-4
    np.testing.assert_allclose(np.asarray(full)[1], np.asarray(a)[1], atol=1e-5)
    # the forward takes the frames too: same as the precomputed memory
    direct = jax.jit(
        lambda p, ids, f, n: MODEL.apply({"params": p}, ids, input_features=f, audio_frames=n)
    )(p, ids, feats, frames)
    np.testing.assert_allclose(np.asarray(direct), np.asarray(a), atol=1e-5)
