"""CGA fusion: modality projectors and gated cross-attention blocks (our extension).

The decoder's text hidden states attend over a *memory*: the request's encoded audio (Whisper
frames stacked 4 to 1, then an MLP to the decoder width) and/or ViT patch tokens (their own MLP).
A CGA block runs after every `cga_every` decoder layers (through the decoder's `layer_hook`):

    x  = norm_q(h)
    o_m = softmax_m(q(x) k_m^T) v_m          one softmax per modality m, GQA like the decoder
    h  = h + o_proj(sum_m g_m o_m)           g_m = tanh(alpha_m) * sigmoid(w_m . x_t) * present_m
    h  = h + (sum_m g'_m) * mlp(norm_f(h))   g'_m the same form, its own alpha'_m and w'_m

alpha_m and alpha'_m start at 0, so every block is the identity until trained and the model
equals its base decoder exactly. present_m is 0 for tokens whose row has no memory of modality
m, so a request without audio is never changed by the audio gates.

Memory K/V depend only on the request's audio/images: `CgaFusion.memory_kv` computes them once
(`MemoryKV`, one (k, v) per block) and the forward takes them precomputed.

Letters follow `nn/layers.py`; here R is memory rows (requests), S memory slots, A encoder
inputs (audio windows or images), L tokens per encoder input, W slots per row for inputs, E the
number of modalities.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.config import ModelConfig
from autoglm_jax.config.model import AUDIO, VIT
from autoglm_jax.nn.layers import DotGeneral, Einsum, RMSNorm, dtype_of

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Memory:
    """Projected modality memory: what the CGA blocks attend to."""

    tokens: Array  # f[R, S, D] in the decoder width; modalities concatenated along S
    valid: Array  # bool[R, S] slots that hold a real token (padding and absent inputs False)
    modality: Array  # i32[S] index into ModelConfig.modalities of each slot


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MemoryKV:
    """Per-CGA-block keys and values of a Memory (computed once per request).

    A serving engine keeps one as a per-slot pool (R = its sequence slots): `empty` builds
    it, `with_row` writes one request's memory into its slot, and each step's tokens pick
    their row with `memory_rows`."""

    k: tuple[Array, ...]  # per block f[R, S, K, H]
    v: tuple[Array, ...]  # per block f[R, S, K, H]
    valid: Array  # bool[R, S]
    modality: Array  # i32[S]

    @classmethod
    def empty(cls, like: MemoryKV, rows: int) -> MemoryKV:
        """`rows` rows shaped as `like`'s (arrays or ShapeDtypeStructs), every slot invalid."""
        return cls(
            tuple(jnp.zeros((rows, *x.shape[1:]), x.dtype) for x in like.k),
            tuple(jnp.zeros((rows, *x.shape[1:]), x.dtype) for x in like.v),
            jnp.zeros((rows, like.valid.shape[1]), bool),
            jnp.zeros(like.modality.shape, jnp.int32),
        )

    def with_row(self, row: Array, one: MemoryKV | None) -> MemoryKV:
        """Row `row` := the one-row memory `one` (R = 1), or no memory at all when None (its
        slots invalid, so the gates see no modality present). Jit-friendly in `row`."""
        if one is None:
            return dataclasses.replace(self, valid=self.valid.at[row].set(False))
        return MemoryKV(
            tuple(p.at[row].set(k[0]) for p, k in zip(self.k, one.k)),
            tuple(p.at[row].set(v[0]) for p, v in zip(self.v, one.v)),
            self.valid.at[row].set(one.valid[0]),
            one.modality,
        )


def _concrete(x: Any) -> np.ndarray | None:
    """x as a host array, or None when it is traced."""
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def default_rows(num_inputs: int, num_rows: int, what: str) -> np.ndarray:
    """The input -> row assignment when none is given: one input per row, or all to row 0."""
    if num_inputs == num_rows:
        return np.arange(num_inputs, dtype=np.int32)
    if num_rows == 1:
        return np.zeros((num_inputs,), np.int32)
    raise ValueError(
        f"{num_inputs} {what} for a batch of {num_rows} rows: pass {what}_rows "
        f"(i32[{num_inputs}], the batch row of each input, -1 for none)"
    )


def slots_per_row(
    rows: Any,
    num_inputs: int,
    num_rows: int,
    given: int | None,
    limit: int | None = None,
    what: str = "inputs",
) -> int:
    """How many inputs one row's memory holds: `given`, else the most any row has (concrete
    rows), else every input (traced rows). More than `limit` per row is an error."""
    slots = _slots_per_row(rows, num_inputs, num_rows, given)
    host = _concrete(rows)
    if limit is not None and host is not None:
        most = int(np.bincount(host[host >= 0], minlength=1).max()) if (host >= 0).any() else 0
        if most > limit:
            raise ValueError(f"a batch row has {most} {what}; the configured maximum is {limit}")
    return slots


def _slots_per_row(rows: Any, num_inputs: int, num_rows: int, given: int | None) -> int:
    host = _concrete(rows)
    if host is not None:
        if host.shape != (num_inputs,):
            raise ValueError(f"rows must have shape [{num_inputs}], got {host.shape}")
        if ((host < -1) | (host >= num_rows)).any():
            raise ValueError(f"rows must be in [-1, {num_rows}), got {host.tolist()}")
        used = host[host >= 0]
        most = int(np.bincount(used, minlength=1).max()) if used.size else 0
        if given is not None and most > given:
            raise ValueError(f"a row has {most} inputs but the memory holds {given} per row")
        if given is None:
            return max(most, 1)
    return given if given is not None else num_inputs


def place_in_rows(
    encoded: Array, rows: Any, num_rows: int, slots: int, input_valid: Array | None = None
) -> tuple[Array, Array]:
    """Inputs to rows: encoded [A, L, D] and rows i32[A] (-1: unused) -> tokens [R, W*L, D]
    and valid bool[R, W*L] with W = slots; each row's inputs in order, then padding.
    input_valid bool[A, L]: which tokens of each input are real (default all).
    Jit-friendly (rows may be traced); inputs past a row's `slots` are dropped."""
    a, length, d = encoded.shape
    rows = jnp.asarray(rows, jnp.int32)
    same = rows[:, None] == rows[None, :]  # [A, A]
    earlier = jnp.tril(jnp.ones((a, a), bool), -1)  # a' < a
    slot = jnp.sum(same & earlier, axis=1)  # [A]
    place = (rows[None, None, :] == jnp.arange(num_rows)[:, None, None]) & (
        slot[None, None, :] == jnp.arange(slots)[None, :, None]
    )  # [R, W, A]
    filled = place.any(-1)  # [R, W]
    source = jnp.argmax(place, axis=-1)  # [R, W]
    tokens = jnp.take(encoded, source.reshape(-1), axis=0)  # [R*W, L, D]
    tokens = jnp.where(filled.reshape(-1)[:, None, None], tokens, jnp.zeros((), encoded.dtype))
    valid = jnp.repeat(filled, length, axis=1)  # [R, W*L]
    if input_valid is not None:
        valid = valid & jnp.take(input_valid, source.reshape(-1), axis=0).reshape(valid.shape)
    return tokens.reshape(num_rows, slots * length, d), valid


def audio_slot_valid(frames: Array, num_slots: int, stack: int) -> Array:
    """bool[A, num_slots]: memory slots of each audio window that hold real audio, from
    frames i32[A], the real mel frames of each window (`processing.audio.window_frames`).
    Whisper's stride-2 conv makes ceil(frames / 2) real positions; a slot stacks `stack`."""
    positions = -(-jnp.asarray(frames, jnp.int32) // 2)
    return jnp.arange(num_slots)[None, :] * stack < positions[:, None]


def stack_frames(x: Array, n: int) -> Array:
    """[A, T, D] -> [A, T/n, n*D]: n consecutive frames side by side."""
    a, t, d = x.shape
    if t % n:
        raise ValueError(f"cannot stack {t} frames {n} to 1")
    return x.reshape(a, t // n, n * d)


def cga_attention(
    q: Array,
    k: Array,
    v: Array,
    valid: Array,
    modality: Array,
    num_modalities: int,
    memory_rows: Array | None,
    sm_scale: float,
) -> tuple[Array, Array]:
    """Cross-attention of text queries over a memory, one softmax per modality.

    q [B, T, N, H]; k/v [R, S, K, H]; valid bool[R, S]; modality i32[S].
    memory_rows None: row b of the batch uses memory row b (R == B). Otherwise i32[B, T], the
    memory row of each token (-1: none), for flat token batches of many requests.
    Returns out [B, T, E, N, H] (per modality) and present f32[B, T, E] (1 where the token has
    at least one valid slot of that modality, else 0: its output is then meaningless).
    """
    b, t, n, h = q.shape
    r, s, kv = k.shape[:3]
    if memory_rows is None:
        if r != b:
            raise ValueError(f"memory has {r} rows for a batch of {b}: pass memory_rows")
        slot_ok = jnp.broadcast_to(valid[:, None, :], (b, t, s))  # [B, T, S]
    else:
        slot_row = jnp.repeat(jnp.arange(r), s)  # [R*S]
        slot_ok = valid.reshape(-1)[None, None, :] & (
            slot_row[None, None, :] == memory_rows[:, :, None]
        )  # [B, T, R*S]
        k = jnp.broadcast_to(k.reshape(1, r * s, kv, h), (b, r * s, kv, h))
        v = jnp.broadcast_to(v.reshape(1, r * s, kv, h), (b, r * s, kv, h))
        modality = jnp.tile(modality, r)
    of_mod = modality[None, :] == jnp.arange(num_modalities)[:, None]  # [E, S]
    mask = slot_ok[:, None, :, :] & of_mod[None, :, None, :]  # [B, E, T, S]
    qg = q.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=jnp.float32)
    logits = logits[:, None] * sm_scale  # [B, 1, K, G, T, S]
    logits = jnp.where(mask[:, :, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, E, K, G, T, S]
    out = jnp.einsum("BEKGTS,BSKH->BTEKGH", probs, v).reshape(b, t, num_modalities, n, h)
    present = jnp.any(mask, axis=-1).transpose(0, 2, 1).astype(jnp.float32)  # [B, T, E]
    return out, present


class Projector(nn.Module):
    """Linear -> GELU -> Linear: an encoder's tokens [A, L, C] -> [A, L, D]."""

    hidden: int
    out: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dot_general: DotGeneral | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        y = Einsum(
            "ALC,CF->ALF",
            (c, self.hidden),
            (None, "mlp"),
            bias_shape=(self.hidden,),
            bias_axes=("mlp",),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=self.dot_general,
            name="fc1",
        )(x)
        y = jax.nn.gelu(y, approximate=False)
        return Einsum(
            "ALF,FD->ALD",
            (self.hidden, self.out),
            ("mlp", "embed"),
            bias_shape=(self.out,),
            bias_axes=("embed",),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            dot_general=self.dot_general,
            name="fc2",
        )(y)


class CgaBlock(nn.Module):
    """One gated cross-attention block (see the module docstring)."""

    config: ModelConfig
    dot_general: DotGeneral | None = None

    def setup(self) -> None:
        c, d = self.config.fusion, self.config.text.d_model
        e = len(self.config.modalities)
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        n, kv, h, f = c.num_heads, c.num_kv_heads, c.head_dim, c.ffw_dim

        def einsum(eq: str, shape: tuple[int, ...], axes: tuple[str | None, ...]) -> Einsum:
            return Einsum(
                eq, shape, axes, dtype=dtype, param_dtype=pdtype, dot_general=self.dot_general
            )

        self.query_norm = RMSNorm(c.rms_norm_eps, pdtype)
        self.memory_norm = RMSNorm(c.rms_norm_eps, pdtype)
        self.mlp_norm = RMSNorm(c.rms_norm_eps, pdtype)
        self.q_proj = einsum("BTD,DNH->BTNH", (d, n, h), ("embed", "heads", "head_dim"))
        self.k_proj = einsum("RSD,DKH->RSKH", (d, kv, h), ("embed", "kv_heads", "head_dim"))
        self.v_proj = einsum("RSD,DKH->RSKH", (d, kv, h), ("embed", "kv_heads", "head_dim"))
        self.o_proj = einsum("BTNH,NHD->BTD", (n, h, d), ("heads", "head_dim", "embed"))
        self.gate_up_proj = einsum("BTD,DCF->BTCF", (d, 2, f), ("embed", None, "mlp"))
        self.down_proj = einsum("BTF,FD->BTD", (f, d), ("mlp", "embed"))
        gate_w = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", None))
        zeros = nn.with_logical_partitioning(nn.initializers.zeros, (None,))
        # Gate arithmetic runs in fp32 (`_gates`); tanh(0) is exactly 0 in any dtype.
        self.attn_gate = self.param("attn_gate", gate_w, (d, e), pdtype)
        self.attn_alpha = self.param("attn_alpha", zeros, (e,), pdtype)
        self.mlp_gate = self.param("mlp_gate", gate_w, (d, e), pdtype)
        self.mlp_alpha = self.param("mlp_alpha", zeros, (e,), pdtype)

    def kv(self, memory_tokens: Array) -> tuple[Array, Array]:
        """memory_tokens [R, S, D] -> (k, v) [R, S, K, H]."""
        m = self.memory_norm(memory_tokens.astype(dtype_of(self.config.fusion.dtype)))
        return self.k_proj(m), self.v_proj(m)

    def _gates(self, x: Array, w: Array, alpha: Array, present: Array) -> Array:
        """f32[B, T, E]: tanh(alpha_m) * sigmoid(w_m . x_t) * present."""
        logits = jnp.einsum("BTD,DE->BTE", x.astype(jnp.float32), w.astype(jnp.float32))
        return jnp.tanh(alpha.astype(jnp.float32)) * jax.nn.sigmoid(logits) * present

    def __call__(
        self,
        h: Array,
        k: Array,
        v: Array,
        valid: Array,
        modality: Array,
        memory_rows: Array | None = None,
    ) -> Array:
        """h [B, T, D] -> [B, T, D]; k/v [R, S, K, H] from `kv`."""
        c = self.config.fusion
        x = self.query_norm(h)
        q = self.q_proj(x)
        out, present = cga_attention(
            q, k, v, valid, modality, len(self.config.modalities), memory_rows, c.head_dim**-0.5
        )
        g = self._gates(x, self.attn_gate, self.attn_alpha, present)  # [B, T, E]
        mixed = jnp.einsum("BTENH,BTE->BTNH", out.astype(jnp.float32), g).astype(q.dtype)
        h = h + self.o_proj(mixed).astype(h.dtype)
        y = self.mlp_norm(h)
        gate_up = self.gate_up_proj(y)
        mlp = self.down_proj(jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :])
        g2 = self._gates(y, self.mlp_gate, self.mlp_alpha, present).sum(-1, keepdims=True)
        return h + (mlp.astype(jnp.float32) * g2).astype(h.dtype)


class CgaFusion(nn.Module):
    """Projectors (`audio_projector`, `vit_projector`) and CGA blocks (`blocks_{j}`)."""

    config: ModelConfig
    dot_general: DotGeneral | None = None

    def setup(self) -> None:
        cfg = self.config
        c, d = cfg.fusion, cfg.text.d_model
        dtype, pdtype = dtype_of(c.dtype), dtype_of(c.param_dtype)
        hidden = c.projector_dim or d
        if cfg.audio is not None:
            self.audio_projector = Projector(hidden, d, dtype, pdtype, self.dot_general)
        if cfg.vit is not None:
            self.vit_projector = Projector(hidden, d, dtype, pdtype, self.dot_general)
        self.blocks = [
            CgaBlock(cfg, self.dot_general) for _ in range(c.num_blocks(cfg.text.num_layers))
        ]

    def project_audio(self, audio_hidden: Array) -> Array:
        """Whisper output [A, 1500, D_audio] -> [A, 1500/stack, D]."""
        return self.audio_projector(stack_frames(audio_hidden, self.config.fusion.audio_stack))

    def project_vit(self, vit_hidden: Array) -> Array:
        """ViT output [I, 1 + P, D_vit] -> patch tokens [I, P, D] (the CLS token is dropped)."""
        return self.vit_projector(vit_hidden[:, 1:])

    def memory(
        self,
        num_rows: int,
        audio_hidden: Array | None = None,
        audio_rows: Any = None,
        vit_hidden: Array | None = None,
        vit_rows: Any = None,
        *,
        max_audio_per_row: int | None = None,
        max_vit_per_row: int | None = None,
        audio_frames: Any = None,
    ) -> Memory:
        """Project encoder outputs and lay them out per batch row (see `place_in_rows`).
        audio_frames i32[A]: real mel frames of each audio window; the slots past them (the
        window's padding) are not attended. None: every slot of a window is."""
        parts = []
        for name, hidden, rows, most in (
            (AUDIO, audio_hidden, audio_rows, max_audio_per_row),
            (VIT, vit_hidden, vit_rows, max_vit_per_row),
        ):
            if hidden is None:
                continue
            tokens = self.project_audio(hidden) if name == AUDIO else self.project_vit(hidden)
            if rows is None:
                rows = default_rows(hidden.shape[0], num_rows, name)
            limit = self.config.audio.max_windows if name == AUDIO else None
            slots = slots_per_row(
                rows,
                hidden.shape[0],
                num_rows,
                most,
                limit,
                "audio windows" if name == AUDIO else "ViT images",
            )
            input_valid = (
                audio_slot_valid(audio_frames, tokens.shape[1], self.config.fusion.audio_stack)
                if name == AUDIO and audio_frames is not None
                else None
            )
            placed, valid = place_in_rows(tokens, rows, num_rows, slots, input_valid)
            index = self.config.modalities.index(name)
            parts.append((placed, valid, np.full((placed.shape[1],), index, np.int32)))
        if not parts:
            raise ValueError("no audio or ViT inputs to build a memory from")
        return Memory(
            jnp.concatenate([p[0] for p in parts], axis=1),
            jnp.concatenate([p[1] for p in parts], axis=1),
            jnp.asarray(np.concatenate([p[2] for p in parts])),
        )

    def memory_kv(self, memory: Memory) -> MemoryKV:
        """Every block's (k, v) of `memory`: computed once per request, reused every step."""
        kvs = [block.kv(memory.tokens) for block in self.blocks]
        return MemoryKV(
            tuple(k for k, _ in kvs), tuple(v for _, v in kvs), memory.valid, memory.modality
        )

    def apply_block(
        self, j: int, h: Array, mkv: MemoryKV, memory_rows: Array | None = None
    ) -> Array:
        return self.blocks[j](h, mkv.k[j], mkv.v[j], mkv.valid, mkv.modality, memory_rows)

    def __call__(
        self, h: Array, audio_hidden: Array | None = None, vit_hidden: Array | None = None
    ) -> Array:
        """Every part once (parameter init): project, K/V, then all blocks on h [B, T, D]."""
        mkv = self.memory_kv(self.memory(h.shape[0], audio_hidden, vit_hidden=vit_hidden))
        for j in range(len(self.blocks)):
            h = self.apply_block(j, h, mkv)
        return h
