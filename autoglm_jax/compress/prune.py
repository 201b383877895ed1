"""Structured pruning of the GLM decoder: rank units on calibration batches, remove a target
share of the decoder's FLOPs, slice the params into a smaller config.

    pruned, report = prune_model(model, batches, PruneConfig(flops_reduction=0.35))
    ag.save(pruned, "checkpoints/tiny-pruned")     # then distill from `model` to recover

Units and their importance, each the mean L2 norm of the unit's contribution to the layer's
output (averaged over every real token of the calibration batches):
- FFN neuron f: |h_f| * ||down_proj[f]||, its activation magnitude at the down-projection
  input (h = silu(gate) * up) times the norm of the row it is multiplied by;
- query head n: ||attn_n @ o_proj[n]||, the norm of its share of the attention output.
Heads are removed the same number from every KV group, so each layer keeps
num_heads_l = G_l * num_kv_heads with head n in group n // G_l (GQA stays valid, the KV
projections and the engine's KV cache keep their shapes). Every layer keeps at least one head
per group and one neuron.

Budget (`PruneConfig.allocation`):
- uniform: every layer gives up `flops_reduction` of its own matmul FLOPs (q, k, v, o,
  gate_up, down); inside a layer the head count is chosen closest to an even split between
  heads and neurons, and the neuron count then meets the layer's share to within one neuron.
  The scores pick which units go. Widths stay uniform (the config stays scalar).
- global: units of all layers compete; each unit's score is divided by the mean norm of its
  layer's output hidden state (its relative effect on the residual stream) and by its FLOPs,
  the cheapest go first until the decoder has lost `flops_reduction` of its FLOPs (then the
  most important removed neurons come back while that overshoots by more than half a
  neuron); every layer keeps at least `min_keep` of its neurons and of each group's heads.
  Widths differ per layer (TextConfig.layer_num_heads / layer_ffw_dims).

The importance comes from the same injected-policy mechanism as QAT (`EinsumPolicy`): the
model code is untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.config import TextConfig
from autoglm_jax.config.quant import PruneConfig
from autoglm_jax.families import decoder_path, get_family
from autoglm_jax.nn.batch import MEDIA_KEYS, forward_kwargs, split_static
from autoglm_jax.nn.layers import Einsum, EinsumPolicy

Array = jax.Array
_COLLECTION = "calibration"


# ------------------------------------------------------------------------------------------
# FLOPs.


def layer_flops(text: TextConfig, layer: int) -> int:
    """Matmul FLOPs per token of one decoder layer (2 per multiply-add)."""
    d, k, h = text.d_model, text.num_kv_heads, text.head_dim
    n, f = text.num_heads_at(layer), text.ffw_dim_at(layer)
    return 2 * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f)


def decoder_flops(text: TextConfig) -> int:
    """Matmul FLOPs per token of all decoder layers (no embeddings, lm_head or the
    length-dependent attention scores)."""
    return sum(layer_flops(text, i) for i in range(text.num_layers))


# ------------------------------------------------------------------------------------------
# Importance.


@dataclasses.dataclass(frozen=True)
class Importance:
    """Per-layer scores over `tokens` calibration tokens: heads[l] f32[num_heads_l] and
    neurons[l] f32[ffw_dim_l] (mean contribution norms), hidden[l] the mean norm of layer l's
    output hidden state."""

    heads: tuple[np.ndarray, ...]
    neurons: tuple[np.ndarray, ...]
    hidden: tuple[float, ...]
    tokens: int


@dataclasses.dataclass(frozen=True)
class _Observer(EinsumPolicy):
    """Float forward that records, per token, each FFN neuron's and each head's contribution
    norm (at the down_proj and o_proj inputs)."""

    decoder_path: tuple[str, ...]

    def einsum(self, module: Einsum, x: Array) -> Array:
        kernel = module.float_kernel()
        path = module.path
        if tuple(path[: len(self.decoder_path)]) == self.decoder_path:
            rel = path[len(self.decoder_path) :]
            xf, kf = x.astype(jnp.float32), kernel.astype(jnp.float32)
            if rel[1:] == ("mlp", "down_proj"):  # x [B,T,F], kernel [F,D]
                module.sow(_COLLECTION, "neurons", jnp.abs(xf) * jnp.linalg.norm(kf, axis=-1))
            elif rel[1:] == ("self_attn", "o_proj"):  # x [B,T,N,H], kernel [N,H,D]
                per_head = jnp.einsum("BTNH,NHD->BTND", xf, kf)
                module.sow(_COLLECTION, "heads", jnp.linalg.norm(per_head, axis=-1))
        return module.product(x, kernel)


def _as_batch(batch: Any) -> tuple[dict[str, np.ndarray], Any]:
    """(the batch's arrays, its static image grid tuple or None)."""
    if not isinstance(batch, Mapping):
        return {"inputs": np.asarray(batch, np.int32)}, None
    ids = batch["inputs"] if "inputs" in batch else batch["input_ids"]
    out: dict[str, Any] = {"inputs": np.asarray(ids, np.int32)}
    for key in ("segment_ids", "positions", "image_grid_thw") + MEDIA_KEYS:
        if batch.get(key) is not None:
            out[key] = np.asarray(batch[key])
    return split_static(out)


def measure_importance(model: Any, batches: Iterable[Any]) -> Importance:
    """Importance of every head and FFN neuron of `model`'s decoder over `batches`: arrays
    i32[B, T] of token ids, or dicts as the training data yields them: "inputs" (or
    "input_ids"), optional "segment_ids" (0 = padding, not counted) and "positions", and for
    glm4v / autoglm models the batch's images and audio (pixel_values + image_grid_thw,
    input_features + audio_rows), so the decoder is ranked on the activations it serves."""
    cfg = model.config
    if cfg.text is None or cfg.text.quant is not None:
        raise ValueError("pruning needs a float model with a GLM decoder")
    prefix = decoder_path(cfg)
    observer = model.module.clone(dot_general=_Observer(prefix))
    layers = cfg.text.num_layers

    @functools.partial(jax.jit, static_argnames=("grid",))
    def step(params: Any, batch: dict[str, Array], grid: Any = None) -> Any:
        ids = batch["inputs"]
        seg = batch.get("segment_ids")
        if batch.get("positions") is None:
            batch = {
                **batch,
                "positions": jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape),
            }
        _, state = observer.apply(
            {"params": params},
            ids,
            **forward_kwargs(observer, batch, grid),
            mutable=[_COLLECTION, "intermediates"],
        )
        calib, inter = state[_COLLECTION], state["intermediates"]
        for key in prefix:
            calib, inter = calib[key], inter[key]
        mask = (seg > 0 if seg is not None else jnp.ones(ids.shape, bool)).astype(jnp.float32)
        heads = [
            jnp.einsum("BTN,BT->N", calib[f"layers_{i}"]["self_attn"]["o_proj"]["heads"][0], mask)
            for i in range(layers)
        ]
        neurons = [
            jnp.einsum("BTF,BT->F", calib[f"layers_{i}"]["mlp"]["down_proj"]["neurons"][0], mask)
            for i in range(layers)
        ]
        hidden = [
            jnp.sum(jnp.linalg.norm(h.astype(jnp.float32), axis=-1) * mask)
            for h in inter["hidden_states"]
        ]
        return heads, neurons, hidden, jnp.sum(mask)

    total = None
    for batch in batches:
        arrays, grid = _as_batch(batch)
        out = jax.device_get(step(model.params, arrays, grid=grid))
        total = out if total is None else jax.tree.map(lambda a, b: a + b, total, out)
    if total is None or float(total[3]) == 0:
        raise ValueError("no calibration tokens: pass at least one batch with real tokens")
    heads, neurons, hidden, tokens = total
    tokens = float(tokens)
    return Importance(
        tuple(np.asarray(h) / tokens for h in heads),
        tuple(np.asarray(n) / tokens for n in neurons),
        tuple(float(h) / tokens for h in hidden),
        int(tokens),
    )


# ------------------------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    """Kept units per layer (sorted indices into the unpruned layer)."""

    keep_heads: tuple[tuple[int, ...], ...]
    keep_neurons: tuple[tuple[int, ...], ...]


def full_plan(text: TextConfig) -> PrunePlan:
    """The plan that keeps everything."""
    return PrunePlan(
        tuple(tuple(range(text.num_heads_at(i))) for i in range(text.num_layers)),
        tuple(tuple(range(text.ffw_dim_at(i))) for i in range(text.num_layers)),
    )


def _costs(text: TextConfig) -> tuple[int, int]:
    """FLOPs per token of (one query head from every KV group, one FFN neuron)."""
    d, h, k = text.d_model, text.head_dim, text.num_kv_heads
    return 4 * d * h * k, 6 * d


def _uniform_counts(
    text: TextConfig, layer: int, share: float, prune_heads: bool
) -> tuple[int, int]:
    """(heads removed per KV group, neurons removed) in one layer for a FLOP share."""
    head_round, neuron = _costs(text)
    n, f = text.num_heads_at(layer), text.ffw_dim_at(layer)
    g = n // text.num_kv_heads
    target = share * layer_flops(text, layer)
    prunable = head_round * g + neuron * f
    even = g * min(1.0, target / prunable)  # rounds for an even split
    best = None
    for r in range(g if prune_heads else 1):
        m = int(np.clip(np.round((target - r * head_round) / neuron), 0, f - 1))
        err = abs(r * head_round + m * neuron - target)
        key = (round(err / neuron), abs(r - even))
        if best is None or key < best[0]:
            best = (key, r, m)
    return best[1], best[2]


def _group_sorted(text: TextConfig, layer: int, scores: np.ndarray) -> np.ndarray:
    """i32[K, G]: each KV group's query heads, least important first."""
    k = text.num_kv_heads
    g = text.num_heads_at(layer) // k
    members = np.arange(k * g).reshape(k, g)
    return np.take_along_axis(members, np.argsort(scores[members], axis=1, kind="stable"), 1)


def _global_counts(text: TextConfig, imp: Importance, config: PruneConfig) -> list[tuple[int, int]]:
    """(heads removed per KV group, neurons removed) per layer, cheapest units first."""
    head_round, neuron = _costs(text)
    target = config.flops_reduction * decoder_flops(text)
    units = []  # (score per FLOP, layer, is_head, position in its layer's stream)
    for i in range(text.num_layers):
        norm = max(imp.hidden[i], 1e-30)
        if config.prune_heads:
            order = _group_sorted(text, i, np.asarray(imp.heads[i]))
            rounds = np.asarray(imp.heads[i])[order].sum(axis=0)  # [G], nondecreasing
            keep = max(1, math.ceil(config.min_keep * len(rounds)))
            units += [
                (rounds[j] / norm / head_round, i, True, j) for j in range(len(rounds) - keep)
            ]
        ns = np.sort(np.asarray(imp.neurons[i]))
        keep = max(1, math.ceil(config.min_keep * len(ns)))
        units += [(ns[j] / norm / neuron, i, False, j) for j in range(len(ns) - keep)]
    units.sort(key=lambda u: u[0])
    rounds, neurons = [0] * text.num_layers, [0] * text.num_layers
    removed, taken = 0, []
    for unit in units:
        if removed >= target:
            break
        _, i, is_head, _ = unit
        if is_head:
            rounds[i] += 1
            removed += head_round
        else:
            neurons[i] += 1
            removed += neuron
        taken.append(unit)
    # Overshoot from a last coarse head round: give back the most important neurons taken.
    for _, i, is_head, _ in reversed(taken):
        if removed - target <= neuron / 2:
            break
        if not is_head and removed - neuron >= target - neuron / 2:
            neurons[i] -= 1
            removed -= neuron
    return list(zip(rounds, neurons))


def plan_pruning(text: TextConfig, importance: Importance, config: PruneConfig) -> PrunePlan:
    """Which heads and neurons each layer keeps to remove `config.flops_reduction` of the
    decoder's FLOPs (see the module docstring for the allocation); least important first."""
    for i in range(text.num_layers):
        n, f = text.num_heads_at(i), text.ffw_dim_at(i)
        hs, ns = np.shape(importance.heads[i]), np.shape(importance.neurons[i])
        if hs != (n,) or ns != (f,):
            raise ValueError(
                f"layer {i}: importance shapes {hs}, {ns} do not match the "
                f"config's {n} heads and {f} FFN neurons"
            )
    if config.allocation == "global":
        counts = _global_counts(text, importance, config)
    else:
        counts = [
            _uniform_counts(text, i, config.flops_reduction, config.prune_heads)
            for i in range(text.num_layers)
        ]
    head_round, neuron = _costs(text)
    removed = sum(r * head_round + m * neuron for r, m in counts)
    achieved = removed / decoder_flops(text)
    if achieved < config.flops_reduction - 0.02:
        raise ValueError(
            f"cannot remove {config.flops_reduction:.0%} of the decoder FLOPs: at most "
            f"{achieved:.1%} with prune_heads={config.prune_heads}, allocation="
            f"{config.allocation!r}"
            + (f", min_keep={config.min_keep}" if config.allocation == "global" else "")
        )
    keep_heads, keep_neurons = [], []
    for i, (r, m) in enumerate(counts):
        order = _group_sorted(text, i, np.asarray(importance.heads[i]))
        keep_heads.append(tuple(sorted(order[:, r:].reshape(-1).tolist())))
        ranked = np.argsort(np.asarray(importance.neurons[i]), kind="stable")
        keep_neurons.append(tuple(sorted(ranked[m:].tolist())))
    return PrunePlan(tuple(keep_heads), tuple(keep_neurons))


def uniform_pruned_config(text: TextConfig, config: PruneConfig) -> TextConfig:
    """The decoder config that uniform pruning to `config.flops_reduction` produces: its widths
    depend only on the shapes (the scores only choose which units go), so this needs no
    calibration, e.g. to size a 9B model's pruned variant with `jax.eval_shape`."""
    if config.allocation != "uniform":
        raise ValueError("only uniform allocation has widths independent of the calibration")
    flat = Importance(
        tuple(np.zeros(text.num_heads_at(i)) for i in range(text.num_layers)),
        tuple(np.zeros(text.ffw_dim_at(i)) for i in range(text.num_layers)),
        tuple(1.0 for _ in range(text.num_layers)),
        1,
    )
    return pruned_text_config(text, plan_pruning(text, flat, config))


# ------------------------------------------------------------------------------------------
# Applying a plan.


def pruned_text_config(text: TextConfig, plan: PrunePlan) -> TextConfig:
    """The decoder config after `plan`; uniform widths stay scalar (and HF-exportable)."""
    heads = tuple(len(h) for h in plan.keep_heads)
    ffw = tuple(len(f) for f in plan.keep_neurons)
    changes: dict[str, Any] = {}
    for field, layer_field, sizes in (
        ("num_heads", "layer_num_heads", heads),
        ("ffw_dim", "layer_ffw_dims", ffw),
    ):
        if len(set(sizes)) == 1:
            changes[field], changes[layer_field] = sizes[0], None
        else:
            changes[field], changes[layer_field] = max(sizes), sizes
    return text.replace(**changes)


def _decoder(params: Any, prefix: tuple[str, ...]) -> Any:
    for key in prefix:
        params = params[key]
    return params


def _with_decoder(params: Any, prefix: tuple[str, ...], decoder: Any) -> Any:
    if not prefix:
        return decoder
    return {**params, prefix[0]: _with_decoder(params[prefix[0]], prefix[1:], decoder)}


def _check_plan(text: TextConfig, plan: PrunePlan) -> None:
    if len(plan.keep_heads) != text.num_layers or len(plan.keep_neurons) != text.num_layers:
        raise ValueError(
            f"the plan covers {len(plan.keep_heads)} layers, the model has {text.num_layers}"
        )
    k = text.num_kv_heads
    for i, heads in enumerate(plan.keep_heads):
        for kept in (heads, plan.keep_neurons[i]):
            if list(kept) != sorted(set(kept)) or (kept and min(kept) < 0):
                raise ValueError(
                    f"layer {i}: kept indices must be sorted, unique and >= 0, got {kept}"
                )
        n = text.num_heads_at(i)
        g = n // k
        per_group = [sum(1 for h in heads if h // g == grp) for grp in range(k)]
        if len(set(per_group)) != 1 or per_group[0] == 0 or max(heads) >= n:
            raise ValueError(
                f"layer {i}: kept heads {heads} must keep the same number (> 0) "
                f"of each KV group's {g} heads"
            )
        if not plan.keep_neurons[i] or max(plan.keep_neurons[i]) >= text.ffw_dim_at(i):
            raise ValueError(f"layer {i}: kept neurons out of range")


def slice_params(
    params: Any, text: TextConfig, plan: PrunePlan, prefix: tuple[str, ...] = ()
) -> Any:
    """The decoder params (at `prefix` inside `params`) physically cut down to `plan`."""
    _check_plan(text, plan)
    dec = dict(_decoder(params, prefix))
    for i in range(text.num_layers):
        heads = np.asarray(plan.keep_heads[i])
        neurons = np.asarray(plan.keep_neurons[i])
        layer = dec[f"layers_{i}"]
        attn, mlp = dict(layer["self_attn"]), dict(layer["mlp"])
        q = dict(attn["q_proj"])
        q["kernel"] = jnp.take(q["kernel"], heads, axis=1)
        if "bias" in q:
            q["bias"] = jnp.take(q["bias"], heads, axis=0)
        attn["q_proj"] = q
        attn["o_proj"] = {
            **attn["o_proj"],
            "kernel": jnp.take(attn["o_proj"]["kernel"], heads, axis=0),
        }
        mlp["gate_up_proj"] = {
            **mlp["gate_up_proj"],
            "kernel": jnp.take(mlp["gate_up_proj"]["kernel"], neurons, axis=2),
        }
        mlp["down_proj"] = {
            **mlp["down_proj"],
            "kernel": jnp.take(mlp["down_proj"]["kernel"], neurons, axis=0),
        }
        dec[f"layers_{i}"] = {**layer, "self_attn": attn, "mlp": mlp}
    return _with_decoder(params, prefix, dec)


def mask_params(
    params: Any, text: TextConfig, plan: PrunePlan, prefix: tuple[str, ...] = ()
) -> Any:
    """Full-size params with the pruned units switched off: o_proj rows of removed heads and
    down_proj rows of removed neurons are zero. Computes what the sliced model computes."""
    _check_plan(text, plan)
    dec = dict(_decoder(params, prefix))
    for i in range(text.num_layers):
        heads = np.zeros(text.num_heads_at(i), bool)
        heads[list(plan.keep_heads[i])] = True
        neurons = np.zeros(text.ffw_dim_at(i), bool)
        neurons[list(plan.keep_neurons[i])] = True
        layer = dec[f"layers_{i}"]
        o = layer["self_attn"]["o_proj"]["kernel"]  # [N, H, D]
        down = layer["mlp"]["down_proj"]["kernel"]  # [F, D]
        o = o * heads[:, None, None].astype(o.dtype)
        down = down * neurons[:, None].astype(down.dtype)
        attn = {**layer["self_attn"], "o_proj": {**layer["self_attn"]["o_proj"], "kernel": o}}
        mlp = {**layer["mlp"], "down_proj": {**layer["mlp"]["down_proj"], "kernel": down}}
        dec[f"layers_{i}"] = {**layer, "self_attn": attn, "mlp": mlp}
    return _with_decoder(params, prefix, dec)


def apply_plan(model: Any, plan: PrunePlan) -> Any:
    """The physically smaller `ag.Model` (config with the pruned widths, sliced params)."""
    cfg = model.config
    prefix = decoder_path(cfg)
    _check_plan(cfg.text, plan)
    new_cfg = cfg.replace(text=pruned_text_config(cfg.text, plan))
    params = slice_params(model.params, cfg.text, plan, prefix)
    module = get_family(new_cfg.model_type, "model").build(new_cfg, None)
    return dataclasses.replace(
        model, config=new_cfg, params=params, module=module, random_init=False
    )


@dataclasses.dataclass(frozen=True)
class PruneReport:
    """What `prune_model` did: FLOPs per token before and after, and the kept widths."""

    flops_before: int
    flops_after: int
    target: float
    heads: tuple[int, ...]
    ffw: tuple[int, ...]
    tokens: int

    @property
    def reduction(self) -> float:
        return 1.0 - self.flops_after / self.flops_before


def prune_model(model: Any, batches: Iterable[Any], config: PruneConfig) -> tuple[Any, PruneReport]:
    """Rank on `batches` (at most `config.calibration_batches` of them), plan, slice."""

    def limited() -> Iterable[Any]:
        for i, batch in enumerate(batches):
            if i >= config.calibration_batches:
                return
            yield batch

    importance = measure_importance(model, limited())
    plan = plan_pruning(model.config.text, importance, config)
    pruned = apply_plan(model, plan)
    text = pruned.config.text
    report = PruneReport(
        decoder_flops(model.config.text),
        decoder_flops(text),
        config.flops_reduction,
        tuple(text.num_heads_at(i) for i in range(text.num_layers)),
        tuple(text.ffw_dim_at(i) for i in range(text.num_layers)),
        importance.tokens,
    )
    return pruned, report
