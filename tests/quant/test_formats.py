"""int8 / int4 weight formats: layouts, packing, rounding error, scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoglm_jax.nn.quant_formats import (
    contracting_axes,
    dequantize,
    layout_for,
    pack_int4,
    quantize,
    unpack_int4,
)


def test_contracting_axes_of_the_glm_einsums():
    assert contracting_axes("BTD,DNH->BTNH") == ((2,), (0,))
    assert contracting_axes("BTNH,NHD->BTD") == ((2, 3), (0, 1))
    assert contracting_axes("BTD,DCF->BTCF") == ((2,), (0,))
    assert contracting_axes("BTF,FD->BTD") == ((2,), (0,))
    with pytest.raises(ValueError):
        contracting_axes("BTD,NH->BTDNH")


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_int4_pack_roundtrip_every_value(n):
    values = np.tile(np.arange(-8, 8, dtype=np.int8), (3, n))[:, : 16 * n - (n % 2)]
    packed = pack_int4(jnp.asarray(values))
    assert packed.dtype == jnp.int8 and packed.shape[-1] == -(-values.shape[-1] // 2)
    np.testing.assert_array_equal(np.asarray(unpack_int4(packed))[:, : values.shape[-1]], values)


def test_int4_groups():
    # Equal groups of at most group_size along the last contracting axis, little padding.
    assert layout_for("BTD,DNH->BTNH", (72, 6, 16), "int4", 32).group == 24
    assert layout_for("BTD,DNH->BTNH", (46, 6, 16), "int4", 128).group == 46
    big = layout_for("BTF,FD->BTD", (13696, 4096), "int4", 128)
    assert (big.group, big.num_groups, big.stored_shape, big.scale_shape) == (
        128,
        107,
        (6848, 4096),
        (107, 4096),
    )
    odd = layout_for("BTF,FD->BTD", (131, 8), "int4", 128)
    assert (odd.group, odd.num_groups, odd.stored_shape) == (66, 2, (66, 8))
    o = layout_for("BTNH,NHD->BTD", (6, 16, 72), "int4", 128)  # groups along H, per head
    assert (o.stored_shape, o.scale_shape) == ((6, 8, 72), (6, 1, 72))


@pytest.mark.parametrize(
    "fmt,shape,eq",
    [
        ("int8", (72, 6, 16), "BTD,DNH->BTNH"),
        ("int8", (6, 16, 72), "BTNH,NHD->BTD"),
        ("int4", (72, 2, 46), "BTD,DCF->BTCF"),
        ("int4", (131, 8), "BTF,FD->BTD"),
        ("int4", (6, 16, 72), "BTNH,NHD->BTD"),
    ],
)
def test_roundtrip_error_is_at_most_half_a_step(fmt, shape, eq):
    w = jax.random.normal(jax.random.key(0), shape) * 0.02
    layout = layout_for(eq, shape, fmt, 32)
    q, scale = quantize(w, layout)
    assert q.dtype == jnp.int8 and q.shape == layout.stored_shape
    assert scale.shape == layout.scale_shape and scale.dtype == jnp.float32
    back = dequantize(q, scale, layout)
    assert back.shape == shape
    # Per-element step: the scale broadcast back onto the kernel.
    step = dequantize(jnp.full_like(q, 0x11 if fmt == "int4" else 1), scale, layout)
    err = np.abs(np.asarray(back - w))
    assert (err <= np.asarray(step) / 2 + 1e-9).all()
    assert err.max() > 0  # it does round
    # The largest |w| of each channel / group is representable exactly at the range's end.
    qmax = layout.qmax
    assert int(jnp.abs(unpack_int4(q) if fmt == "int4" else q).max()) == qmax


def test_scales_rounded_to_bf16_are_used_for_rounding():
    w = jax.random.normal(jax.random.key(1), (64, 24))
    layout = layout_for("BTD,DF->BTF", (64, 24), "int8")
    q, scale = quantize(w, layout, scale_dtype=jnp.bfloat16)
    assert scale.dtype == jnp.bfloat16
    expect = jnp.clip(jnp.round(w / scale.astype(jnp.float32)), -127, 127)
    np.testing.assert_array_equal(np.asarray(q), np.asarray(expect, np.int8))


def test_zero_channels_and_clipping():
    w = jnp.zeros((8, 4)).at[:, 1].set(jnp.arange(8.0))
    layout = layout_for("BTD,DF->BTF", (8, 4), "int8")
    q, scale = quantize(w, layout)
    assert np.isfinite(np.asarray(scale)).all()
    np.testing.assert_array_equal(np.asarray(dequantize(q, scale, layout))[:, 0], 0)
    q, scale = quantize(w, layout, clip=0.5)  # the upper half saturates at 127
    assert int(q[7, 1]) == 127 and int(q[6, 1]) == 127 and int(q[2, 1]) < 127
