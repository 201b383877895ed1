"""Losses over masked token positions: cross-entropy, temperature KL, hidden-state MSE.

Shapes: logits f32[B, T, V], targets i32[B, T], mask f32[B, T] (1 where the loss counts),
hidden [B, T, D]. Every loss is a mean over the masked tokens (0 when the mask is empty), so a
batch's value does not depend on how many padding tokens it holds.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of values [B, T] over mask [B, T]; 0 for an empty mask."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def token_nll(logits: Array, targets: Array) -> Array:
    """-log p(target) per token, f32[B, T]."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - picked


def cross_entropy(logits: Array, targets: Array, mask: Array) -> Array:
    return masked_mean(token_nll(logits, targets), mask)


def token_kl(teacher_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
    """KL(teacher_T || student_T) per token, f32[B, T], with both softened by temperature T."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def kl_divergence(
    teacher_logits: Array, student_logits: Array, mask: Array, temperature: float = 1.0
) -> Array:
    return masked_mean(token_kl(teacher_logits, student_logits, temperature), mask)


def hidden_mse(student: Sequence[Array], teacher: Sequence[Array], mask: Array) -> Array:
    """Mean over the layer pairs of the per-token mean squared difference ([B, T, D] each)."""
    if not student:
        return jnp.zeros((), jnp.float32)
    per_pair = [
        masked_mean(
            jnp.mean(jnp.square(s.astype(jnp.float32) - t.astype(jnp.float32)), axis=-1), mask
        )
        for s, t in zip(student, teacher, strict=True)
    ]
    return sum(per_pair) / len(per_pair)


def distill_loss(
    student_logits: Array,
    teacher_logits: Array,
    targets: Array,
    mask: Array,
    *,
    alpha: float,
    temperature: float,
    beta: float = 0.0,
    student_hidden: Sequence[Array] = (),
    teacher_hidden: Sequence[Array] = (),
) -> tuple[Array, dict[str, Array]]:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE + beta * hidden MSE.

    The T^2 factor keeps the soft-target gradients on the scale of the CE ones (Hinton et al.).
    Returns the loss and its parts (kl at temperature T).
    """
    ce = cross_entropy(student_logits, targets, mask)
    kl = kl_divergence(teacher_logits, student_logits, mask, temperature)
    mse = hidden_mse(student_hidden, teacher_hidden, mask)
    loss = alpha * temperature**2 * kl + (1.0 - alpha) * ce + beta * mse
    return loss, {"ce": ce, "kl": kl, "hidden_mse": mse}


def token_accuracy(logits: Array, targets: Array, mask: Array) -> Array:
    return masked_mean(jnp.argmax(logits, axis=-1) == targets, mask)


def sequence_accuracy(logits: Array, targets: Array, mask: Array, segment_ids: Array) -> Array:
    """Fraction of examples (segments with at least one masked token) whose masked tokens are
    all predicted right (argmax, teacher forced): exact match of the whole answer."""
    b, t = targets.shape
    wrong = (mask > 0) & (jnp.argmax(logits, axis=-1) != targets)
    # one bucket per (row, segment id); segment ids are < T+1
    bucket = (jnp.arange(b)[:, None] * (t + 1) + segment_ids).reshape(-1)
    n = b * (t + 1)
    has_loss = jax.ops.segment_sum((mask > 0).reshape(-1).astype(jnp.int32), bucket, n) > 0
    any_wrong = jax.ops.segment_sum(wrong.reshape(-1).astype(jnp.int32), bucket, n) > 0
    total = jnp.sum(has_loss)
    return jnp.sum(has_loss & ~any_wrong) / jnp.maximum(total, 1)
