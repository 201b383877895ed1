"""The optimizer and the one jitted, sharded train step (plain and distillation).

    tx, schedule = make_optimizer(recipe.optim, recipe.steps, params)
    state = init_state(params, tx, seed, shardings)
    step = make_train_step(module, tx, shardings)             # or distill=..., teacher_module=
    state, metrics = step(state, batch)                       # batch: dict of i32[B, T]

The step is agnostic of how the module computes: QAT passes a module built with another
`dot_general`; the parameter tree is unchanged.

Multimodal batches (glm4v / autoglm modules; see training/media.py) add `pixel_values`
f32[P, 1176] with `image_grid_thw` (host numpy [n, 3]: static, one compilation per distinct
grid tuple), `input_features` f32[B*W, mels, 3000] with `audio_rows` i32[B*W], and M-RoPE
`positions` i32[B, 3, T]. Frozen parameters (`trainable` False) are cut off the gradient
computation (`stop_gradient`), so training only the CGA fusion does not backpropagate into
the encoders.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import autoglm_jax.sharding as shd
from autoglm_jax.nn.batch import BATCH_KEYS, MEDIA_KEYS, STATIC_KEYS, forward_kwargs, split_static
from autoglm_jax.training import losses
from autoglm_jax.training.recipe import DistillRecipe, OptimRecipe

Array = jax.Array
CGA_PATTERNS = ("fusion/*",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    step: Array  # i32[]: train_step calls so far (micro-steps, skipped ones included)
    params: Any  # the model's params (master dtype)
    opt_state: Any  # optax state
    rng: Array  # u32[2]: raw key data, split every step (dropout / QAT noise to come)


# --- parameter paths and masks ---------------------------------------------------------------


def path_str(path: Sequence[Any]) -> str:
    """'layers_0/mlp/down_proj/kernel' for a jax key path."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def decay_mask(params: Any) -> Any:
    """True for matrices (kernels, embeddings); False for norm scales and biases."""

    def one(path: Any, x: Any) -> bool:
        name = path_str(path).rsplit("/", 1)[-1]
        return x.ndim >= 2 and name not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(one, params)


def trainable_mask(params: Any, patterns: Sequence[str] = ()) -> Any:
    """True for parameters that train: all when `patterns` is empty, else those whose path
    matches a glob pattern (e.g. 'layers_*/mlp/*', 'fusion/*')."""

    def one(path: Any, _: Any) -> bool:
        p = path_str(path)
        return not patterns or any(fnmatch.fnmatchcase(p, pat) for pat in patterns)

    mask = jax.tree_util.tree_map_with_path(one, params)
    if patterns and not any(jax.tree.leaves(mask)):
        raise ValueError(
            f"optim.trainable {list(patterns)} matches no parameter "
            f"(paths look like {path_str(jax.tree_util.tree_leaves_with_path(params)[0][0])!r})"
        )
    return mask


def count_params(params: Any, mask: Any | None = None) -> int:
    leaves = jax.tree.leaves(params)
    if mask is None:
        return sum(x.size for x in leaves)
    return sum(x.size for x, m in zip(leaves, jax.tree.leaves(mask)) if m)


# --- optimizer ---------------------------------------------------------------------------------


def make_schedule(optim: OptimRecipe, total_steps: int) -> optax.Schedule:
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optim.lr * optim.min_lr_ratio,
    )


def trainable_patterns(optim: OptimRecipe) -> tuple[str, ...]:
    """The glob patterns of the parameters that train (empty: all): `optim.train = "cga"`
    is the CGA fusion (`fusion/*`), else `optim.trainable`."""
    return CGA_PATTERNS if optim.train == "cga" else tuple(optim.trainable)


def make_optimizer(
    optim: OptimRecipe, total_steps: int, params: Any
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip by global norm -> AdamW (no decay on norms/biases) on a warmup-cosine schedule;
    parameters outside `optim.trainable` get zero updates and no Adam state; with
    grad_accum > 1 wrapped in optax.MultiSteps (one update per grad_accum calls)."""
    schedule = make_schedule(optim, total_steps)
    parts = []
    if optim.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if optim.train == "cga" and not (isinstance(params, dict) and "fusion" in params):
        from autoglm_jax.config import ConfigError

        raise ConfigError(
            "field `optim.train`: 'cga' trains the CGA fusion (fusion/*), which "
            "this model does not have (model_type autoglm has it, e.g. preset "
            "tiny-mm)"
        )
    patterns = trainable_patterns(optim)
    if patterns:
        labels = jax.tree.map(
            lambda t: "train" if t else "freeze", trainable_mask(params, patterns)
        )
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    if optim.grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.grad_accum).gradient_transformation()
    return tx, schedule


# --- sharding ---------------------------------------------------------------------------------


def _dict_suffix(path: Sequence[Any]) -> tuple[str, ...]:
    out = []
    for k in reversed(path):
        if not isinstance(k, jax.tree_util.DictKey):
            break
        out.append(str(k.key))
    return tuple(reversed(out))


def state_shardings(params: Any, abstract_opt_state: Any, mesh: Mesh) -> TrainState:
    """Shardings of a TrainState: params keep theirs (`x.sharding`); an optimizer-state leaf
    whose trailing dict keys and shape match a parameter (Adam moments, accumulated gradients)
    takes that parameter's sharding; everything else (counts) is replicated."""
    rep = NamedSharding(mesh, P())
    by_path = {
        tuple(path_str(p).split("/")): x for p, x in jax.tree_util.tree_leaves_with_path(params)
    }
    param_sh = jax.tree.map(
        lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else rep, params
    )
    sh_by_path = {
        tuple(path_str(p).split("/")): s for p, s in jax.tree_util.tree_leaves_with_path(param_sh)
    }

    def one(path: Any, leaf: Any) -> NamedSharding:
        key = _dict_suffix(path)
        for i in range(len(key)):
            match = by_path.get(key[i:])
            if match is not None and match.shape == leaf.shape:
                return sh_by_path[key[i:]]
        return rep

    opt_sh = jax.tree_util.tree_map_with_path(one, abstract_opt_state)
    return TrainState(step=rep, params=param_sh, opt_state=opt_sh, rng=rep)


def init_state(
    params: Any, tx: optax.GradientTransformation, seed: int, mesh: Mesh | None = None
) -> tuple[TrainState, TrainState | None]:
    """A fresh TrainState (and its shardings when `mesh` is given). Params are not copied."""
    rng = jax.random.key_data(jax.random.key(seed))
    if mesh is None:
        opt_state = jax.jit(tx.init)(params)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, rng), None
    shardings = state_shardings(params, jax.eval_shape(tx.init, params), mesh)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    state = TrainState(
        jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
        params,
        opt_state,
        jax.device_put(rng, shardings.rng),
    )
    return state, shardings


def batch_shardings(
    mesh: Mesh, rules: str, batch: dict[str, Any] | None = None
) -> dict[str, NamedSharding]:
    """Shardings of a batch's arrays: rows (and audio windows, laid out row-major) over the
    rules' batch axes; pixel_values replicated (images are not aligned with rows). `batch`
    (host arrays) gives the keys and ranks; default: the text keys, rank 2."""
    if batch is None:
        return {k: shd.batch_sharding(mesh, rules, 2) for k in BATCH_KEYS}
    return {
        k: (
            NamedSharding(mesh, P())
            if k == "pixel_values"
            else shd.batch_sharding(mesh, rules, np.ndim(batch[k]))
        )
        for k in BATCH_KEYS + MEDIA_KEYS
        if k in batch
    }


def put_batch(batch: dict[str, Any], shardings: dict[str, NamedSharding] | None) -> dict[str, Any]:
    """Host numpy batch -> device arrays (this process's rows of the global batch); the
    static `image_grid_thw` stays a host array."""
    out: dict[str, Any] = {}
    for k in BATCH_KEYS + MEDIA_KEYS:
        if k not in batch:
            continue
        x = batch[k]
        out[k] = (
            jnp.asarray(x)
            if shardings is None
            else jax.make_array_from_process_local_data(shardings[k], x)
        )
    for k in STATIC_KEYS:
        if k in batch:
            out[k] = np.asarray(batch[k])
    return out


# --- the step ---------------------------------------------------------------------------------


def _forward(
    module: nn.Module, params: Any, batch: dict[str, Array], hidden: bool, grid: Any = None
) -> tuple[Array, tuple[Array, ...]]:
    kw = forward_kwargs(module, batch, grid)
    if not hidden:
        return module.apply({"params": params}, batch["inputs"], **kw), ()
    logits, inter = module.apply(
        {"params": params}, batch["inputs"], mutable=["intermediates"], **kw
    )
    return logits, tuple(inter["intermediates"]["hidden_states"])


def make_loss_fn(
    module: nn.Module, distill: DistillRecipe | None = None, teacher_module: nn.Module | None = None
) -> Callable[[Any, dict[str, Array], Any], tuple[Array, dict[str, Array]]]:
    """loss_fn(params, batch, teacher_params, grid=None) -> (loss, metrics); grid: the
    static image grid tuple of a batch with pixel_values."""
    beta = distill.beta if distill is not None else 0.0
    layer_map = distill.layer_map if distill is not None and beta > 0 else ()

    def loss_fn(params: Any, batch: dict[str, Array], teacher_params: Any, grid: Any = None):
        mask = batch["loss_mask"].astype(jnp.float32)
        logits, hs = _forward(module, params, batch, bool(layer_map), grid)
        metrics = {
            "accuracy": losses.token_accuracy(logits, batch["targets"], mask),
            "tokens": jnp.sum(mask),
            "input_tokens": jnp.sum(batch["segment_ids"] != 0),
        }
        if distill is None:
            loss = losses.cross_entropy(logits, batch["targets"], mask)
            return loss, {**metrics, "ce": loss}
        t_logits, t_hs = _forward(
            teacher_module, jax.lax.stop_gradient(teacher_params), batch, bool(layer_map), grid
        )
        loss, parts = losses.distill_loss(
            logits,
            jax.lax.stop_gradient(t_logits),
            batch["targets"],
            mask,
            alpha=distill.alpha,
            temperature=distill.temperature,
            beta=beta,
            student_hidden=[hs[s] for s, _ in layer_map],
            teacher_hidden=[jax.lax.stop_gradient(t_hs[t]) for _, t in layer_map],
        )
        return loss, {**metrics, **parts}

    return loss_fn


def make_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    shardings: TrainState | None = None,
    *,
    mesh: Mesh | None = None,
    rules: str = "fsdp",
    trainable: Any | None = None,
    distill: DistillRecipe | None = None,
    teacher_module: nn.Module | None = None,
    teacher_shardings: Any | None = None,
    grad_accum: int = 1,
) -> Callable:
    """step(state, batch, teacher_params=None) -> (state, metrics), jitted, state donated.

    Non-finite guard: when the loss or the gradient norm is NaN/inf, params and optimizer
    state are kept as they were (metrics["finite"] = 0). With grad_accum > 1 the bad
    micro-batch contributes a zero gradient instead, so MultiSteps' counters stay aligned
    with the loop's. `trainable` (bool tree) restricts the reported grad_norm, and the
    parameters it marks False get no backward pass (zero gradients).

    Batches of another structure (media keys, ranks) or image grid get their own jitted
    function (`call.jitted_for(batch)`), compiled at first use.
    """
    loss_fn = make_loss_fn(module, distill, teacher_module)
    freeze = trainable is not None and not all(jax.tree.leaves(trainable))

    def frozen_loss(params: Any, batch: dict[str, Array], teacher_params: Any, grid: Any):
        if freeze:  # no backward pass into frozen parameters (their gradient is 0)
            params = jax.tree.map(
                lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable
            )
        return loss_fn(params, batch, teacher_params, grid)

    def step(
        state: TrainState, batch: dict[str, Array], teacher_params: Any = None, grid: Any = None
    ):
        (loss, metrics), grads = jax.value_and_grad(frozen_loss, has_aux=True)(
            state.params, batch, teacher_params, grid
        )
        shown = (
            grads
            if trainable is None
            else jax.tree.map(lambda g, t: g if t else jnp.zeros((), g.dtype), grads, trainable)
        )
        grad_norm = optax.global_norm(shown)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if grad_accum > 1:
            grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if grad_accum == 1:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        new = TrainState(state.step + 1, params, opt_state, rng)
        return new, {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "finite": finite.astype(jnp.float32),
        }

    compiled: dict[Any, Callable] = {}

    def jitted_for(batch: dict[str, Any]) -> Callable:
        """The jitted step for a batch of this structure (keys, ranks, image grid)."""
        arrays, grid = split_static(batch)
        key = (tuple(sorted((k, np.ndim(v)) for k, v in arrays.items())), grid)
        fn = compiled.get(key)
        if fn is None:
            body = functools.partial(step, grid=grid)
            if shardings is None or mesh is None:
                fn = jax.jit(body, donate_argnums=(0,))
            else:
                rep = NamedSharding(mesh, P())
                in_sh = (shardings, batch_shardings(mesh, rules, arrays), teacher_shardings)
                fn = jax.jit(
                    body, in_shardings=in_sh, out_shardings=(shardings, rep), donate_argnums=(0,)
                )
            compiled[key] = fn
        return fn

    def call(state: TrainState, batch: dict[str, Any], teacher_params: Any = None):
        return jitted_for(batch)(state, split_static(batch)[0], teacher_params)

    call.jitted_for = jitted_for  # for .lower() / cost analysis
    call.compiled = compiled
    return call


def make_eval_step(module: nn.Module, teacher_module: nn.Module | None = None) -> Callable:
    """eval(params, batch, teacher_params=None) -> ce, accuracy, seq_accuracy (exact match of
    each example's masked tokens), and kl (temperature 1) against the teacher when given."""

    def evaluate(
        params: Any, batch: dict[str, Array], teacher_params: Any = None, grid: Any = None
    ):
        mask = batch["loss_mask"].astype(jnp.float32)
        logits, _ = _forward(module, params, batch, False, grid)
        out = {
            "ce": losses.cross_entropy(logits, batch["targets"], mask),
            "accuracy": losses.token_accuracy(logits, batch["targets"], mask),
            "seq_accuracy": losses.sequence_accuracy(
                logits, batch["targets"], mask, batch["segment_ids"]
            ),
        }
        if teacher_module is not None:
            t_logits, _ = _forward(teacher_module, teacher_params, batch, False, grid)
            out["kl"] = losses.kl_divergence(t_logits, logits, mask)
        return out

    jitted = jax.jit(evaluate, static_argnames=("grid",))

    def call(params: Any, batch: dict[str, Any], teacher_params: Any = None):
        arrays, grid = split_static(batch)
        return jitted(params, arrays, teacher_params, grid=grid)

    return call
