"""HF <-> Flax tensor maps for the Whisper encoder.

WhisperForConditionalGeneration checkpoints (openai/whisper-*) store the encoder under
`model.encoder.*`; a bare WhisperModel under `encoder.*`. The decoder and the output projection
are not ours: keys under `IGNORED_PREFIXES` are skipped by the loader, not reported as unexpected.
"""

from __future__ import annotations

from autoglm_jax.config.audio import AudioConfig
from autoglm_jax.families.keymap import TensorMap, linear_weight, reshaped, transposed

# Decoder side of WhisperForConditionalGeneration ("model.decoder.", "proj_out.") and of a bare
# WhisperModel ("decoder.").
IGNORED_PREFIXES = ("model.decoder.", "proj_out.", "decoder.")


def is_ignored(key: str) -> bool:
    """True for checkpoint keys that belong to the Whisper decoder."""
    return key.startswith(IGNORED_PREFIXES)


def hf_tensor_maps(
    c: AudioConfig, *, prefix: str = "model.encoder.", path_prefix: tuple[str, ...] = ()
) -> list[TensorMap]:
    """Every tensor of the Whisper encoder. `prefix` is "model.encoder." for
    WhisperForConditionalGeneration and "encoder." for WhisperModel; `path_prefix` nests the
    params (composites)."""
    d, f, n, h = c.d_model, c.ffw_dim, c.num_heads, c.head_dim
    p = path_prefix
    maps = [
        # torch Conv1d weight [out, in, k] -> our [k, in, out]
        transposed(f"{prefix}conv1.weight", (*p, "conv1", "kernel"), (2, 1, 0)),
        TensorMap(f"{prefix}conv1.bias", (*p, "conv1", "bias")),
        transposed(f"{prefix}conv2.weight", (*p, "conv2", "kernel"), (2, 1, 0)),
        TensorMap(f"{prefix}conv2.bias", (*p, "conv2", "bias")),
        TensorMap(f"{prefix}embed_positions.weight", (*p, "embed_positions")),
        TensorMap(f"{prefix}layer_norm.weight", (*p, "layer_norm", "scale")),
        TensorMap(f"{prefix}layer_norm.bias", (*p, "layer_norm", "bias")),
    ]
    for i in range(c.num_layers):
        hf, fx = f"{prefix}layers.{i}.", (*p, f"layers_{i}")
        attn = (*fx, "self_attn")
        for name in ("q_proj", "k_proj", "v_proj"):
            maps.append(
                linear_weight(f"{hf}self_attn.{name}.weight", (*attn, name, "kernel"), (d,), (n, h))
            )
            if name != "k_proj":  # Whisper's k_proj has no bias
                maps.append(
                    reshaped(f"{hf}self_attn.{name}.bias", (*attn, name, "bias"), (n, h), (n * h,))
                )
        maps.append(
            linear_weight(
                f"{hf}self_attn.out_proj.weight", (*attn, "out_proj", "kernel"), (n, h), (d,)
            )
        )
        maps.append(TensorMap(f"{hf}self_attn.out_proj.bias", (*attn, "out_proj", "bias")))
        maps.append(linear_weight(f"{hf}fc1.weight", (*fx, "fc1", "kernel"), (d,), (f,)))
        maps.append(TensorMap(f"{hf}fc1.bias", (*fx, "fc1", "bias")))
        maps.append(linear_weight(f"{hf}fc2.weight", (*fx, "fc2", "kernel"), (f,), (d,)))
        maps.append(TensorMap(f"{hf}fc2.bias", (*fx, "fc2", "bias")))
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            maps.append(TensorMap(f"{hf}{norm}.weight", (*fx, norm, "scale")))
            maps.append(TensorMap(f"{hf}{norm}.bias", (*fx, norm, "bias")))
    return maps
