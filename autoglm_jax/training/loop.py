"""The training loop: setup, steps, Orbax checkpoints, non-finite guard, metrics.

    result = run_pretrain(load_recipe("configs/recipes/tiny-pretrain.toml"))
    result = run_distill(recipe, resume=True)

Checkpoints (`<run_dir>/checkpoints/<step>/`, Orbax CheckpointManager) hold the TrainState
(params, optimizer state, step, RNG), each process's data iterator state (Grain's
`process_<i>-of-<n>.json`) and the recipe + model config.
Orbax writes each into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest; leftovers are removed on start.
`resume=True` restores the latest and continues exactly (same batches, same updates).

Multi-process (after `autoglm_jax.distributed.initialize`): every process runs this loop on
its share of each global batch; checkpoints and the exported model are written by all of them
into the shared run_dir, metrics, TensorBoard, loss.png and messages by process 0 only.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import autoglm_jax.checkpoint as ckpt
from autoglm_jax.config import ConfigError
from autoglm_jax.distributed import is_primary
from autoglm_jax.families import get_family
from autoglm_jax.sharding import make_mesh
from autoglm_jax.training import step as st
from autoglm_jax.training.data import MediaProcessor, make_dataset
from autoglm_jax.training.media import processor_for
from autoglm_jax.training.metrics import MetricsWriter, Progress, plot_losses, read_jsonl
from autoglm_jax.training.recipe import TrainRecipe, model_config
from autoglm_jax.training.vision_health import COLLAPSED, image_spread


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss or gradient."""


@dataclasses.dataclass
class RunResult:
    state: st.TrainState
    model: ckpt.Model  # the trained model (params = state.params)
    history: list[dict[str, Any]]  # metrics of the steps this call ran
    run_dir: Path
    start_step: int  # 0, or the step resumed from


def log(msg: str) -> None:
    """A message on stderr, from process 0 only (every process would say the same)."""
    if is_primary():
        print(msg, file=sys.stderr, flush=True)


# --- setup -----------------------------------------------------------------------------------


def initial_model(recipe: TrainRecipe, mesh: Any = None) -> ckpt.Model:
    """The model a run starts from: `model.init_from` loaded, else the preset initialised."""
    r, rules = recipe.model, recipe.mesh.rules
    if r.init_from:
        m = ckpt.load(r.init_from, dtype=r.param_dtype, mesh=mesh, rules=rules)
        if r.dtype != r.param_dtype:  # mixed precision: rebuild the module, keep the params
            cfg = m.config.with_dtypes(r.param_dtype, r.dtype)
            m = dataclasses.replace(
                m, config=cfg, module=get_family(cfg.model_type, "model").build(cfg, None)
            )
        return m
    return ckpt.init(model_config(r), seed=r.seed, mesh=mesh, rules=rules, init=r.init)


def recipe_tokenizer(recipe: TrainRecipe, model: ckpt.Model) -> Any:
    """data.tokenizer if the recipe names one, else the model's, else the tiny tokenizer."""
    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

    if recipe.data.tokenizer:
        return Tokenizer.from_dir(recipe.data.tokenizer)
    if model.tokenizer is not None:
        return model.tokenizer
    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


def _check_teacher(recipe: TrainRecipe, student: ckpt.Model, teacher: ckpt.Model) -> None:
    s, t, k = student.config.text, teacher.config.text, recipe.distill
    if s.vocab_size != t.vocab_size:
        raise ConfigError(
            f"teacher vocab_size {t.vocab_size} != student vocab_size {s.vocab_size}"
            " (distillation needs the same vocabulary)"
        )
    for si, ti in k.layer_map:
        if not (0 <= si < s.num_layers and 0 <= ti < t.num_layers):
            raise ConfigError(
                f"distill.layer_map pair ({si}, {ti}) out of range: student has "
                f"{s.num_layers} layers, teacher {t.num_layers}"
            )
    if k.beta > 0 and s.d_model != t.d_model:
        raise ConfigError(
            f"distill.beta > 0 matches hidden states, which needs equal widths: "
            f"student d_model {s.d_model} != teacher {t.d_model} (no projection "
            "is learned; set beta = 0 or use a student of the teacher's width)"
        )


def _checkpoint_manager(recipe: TrainRecipe) -> ocp.CheckpointManager:
    c = recipe.checkpoint
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.keep,
        enable_async_checkpointing=c.async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    return ocp.CheckpointManager(Path(recipe.run_dir).absolute() / "checkpoints", options=options)


def _save(
    mngr: ocp.CheckpointManager, step: int, state: st.TrainState, it: Any, meta: dict[str, Any]
) -> None:
    # Each process writes its own iterator state (Grain's handler: one file per process).
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iterator=grain.checkpoint.CheckpointSave(it),
            meta=ocp.args.JsonSave({**meta, "step": step}),
        ),
        force=True,
    )


def _iterator_processes(step_dir: Path) -> int | None:
    """How many processes wrote the data iterator states of a checkpoint (None: the single
    JSON state of checkpoints written before per-process states)."""
    counts = {
        p.stem.rpartition("-of-")[2]
        for p in (step_dir / "data_iterator").glob("process_*-of-*.json")
    }
    if not counts:
        return None
    if len(counts) > 1 or not next(iter(counts)).isdigit():
        raise ckpt.CheckpointError(
            f"{step_dir}/data_iterator: iterator states of different "
            f"process counts ({sorted(counts)}): the checkpoint is damaged"
        )
    return int(next(iter(counts)))


def restore_checkpoint(
    mngr: ocp.CheckpointManager, step: int, like: st.TrainState, shardings: st.TrainState, it: Any
) -> dict[str, Any]:
    """Restores checkpoint `step`: returns the state placed in `shardings` and sets this
    process's data iterator `it` to where it was; returns (state, meta)."""
    step_dir = Path(mngr.directory) / str(step)
    writers, count = _iterator_processes(step_dir), jax.process_count()
    if writers is not None and writers != count:
        raise ConfigError(
            f"--resume: {step_dir} was written by {writers} process(es), this run "
            f"has {count}: each process's data position is saved separately, so "
            f"resume with {writers} process(es) (the mesh inside them may change)"
        )
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings
    )
    data = ocp.args.JsonRestore() if writers is None else grain.checkpoint.CheckpointRestore(it)
    name = "data" if writers is None else "data_iterator"
    out = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore(), **{name: data}
        ),
    )
    if writers is None:
        if count > 1:
            raise ConfigError(
                f"--resume: {step_dir} holds one data iterator state (a "
                "single-process run); resume it with one process"
            )
        it.set_state(out["data"])
    return out["state"], out["meta"]


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in _differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
        ]
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        old, new = list(old), list(new)
    return [] if old == new else [f"{prefix}: checkpoint {old!r}, now {new!r}"]


def _check_resume(
    mngr: ocp.CheckpointManager, step: int, recipe: TrainRecipe, model_config: dict[str, Any]
) -> None:
    """A resumed run must train the same model on the same data: compare the run's recipe with
    the one the checkpoint was written under. Optimizer and distillation changes are allowed
    (with a warning); model or data changes are refused, listing the fields."""
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001
        raise ckpt.CheckpointError(
            f"{mngr.directory}/{step}: cannot read the checkpoint's recipe "
            f"(meta): {str(e).splitlines()[0][:300]}"
        ) from None
    old, new = meta.get("recipe", {}), recipe.to_dict()
    refused = (
        _differences(old.get("model"), new.get("model"), "model")
        + _differences(old.get("data"), new.get("data"), "data")
        + _differences(meta.get("model_config"), model_config, "model config")
    )
    if refused:
        raise ConfigError(
            f"--resume: {mngr.directory}/{step} was written by a run with another "
            "model or data recipe; resume it with the same one, or start a new "
            "run_dir. Differences: " + "; ".join(refused)
        )
    changed = _differences(old.get("optim"), new.get("optim"), "optim") + _differences(
        old.get("distill"), new.get("distill"), "distill"
    )
    if changed:
        log("warning: resuming with changed settings: " + "; ".join(changed))


def _flops_line(
    mesh: Any, recipe: TrainRecipe, n_params: int, n_train: int, teacher_params: int
) -> str:
    tokens = recipe.data.batch_size * recipe.data.seq_len * recipe.optim.grad_accum
    flops = 6 * n_params * tokens + 2 * teacher_params * tokens
    teacher = f" + teacher forward 2*{teacher_params:,}*tokens" if teacher_params else ""
    at_most = "at most " if recipe.data.length_groups else ""  # batches cut to their longest
    return (
        f"mesh {dict(mesh.shape)} rules {recipe.mesh.rules} on {mesh.devices.size} "
        f"{jax.devices()[0].platform} device(s) | params {n_params:,} | trainable "
        f"{n_train:,} | tokens/step {at_most}{tokens:,} | est. FLOPs/step {at_most}{flops:.3e} "
        f"(6*params*tokens{teacher})"
    )


# --- the loop ----------------------------------------------------------------------------------


def train(
    recipe: TrainRecipe,
    *,
    resume: bool = False,
    teacher: ckpt.Model | None = None,
    model: ckpt.Model | None = None,
    media_processor: MediaProcessor | None = None,
    dataset: grain.IterDataset | None = None,
) -> RunResult:
    """Runs `recipe` (distillation when a teacher is given). `model` replaces the one the
    recipe describes (tests, notebooks); it must live on the recipe's mesh (or one device).
    `dataset` replaces the recipe's batches (this process's rows of each global batch, as
    `make_dataset` yields them)."""
    recipe.validate()
    m = recipe.mesh
    mesh = make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)
    if model is not None:  # the loop donates its params: leave the caller's arrays alone
        student = dataclasses.replace(model, params=jax.tree.map(jnp.copy, model.params))
    else:
        student = initial_model(recipe, mesh)
    if teacher is not None:
        _check_teacher(recipe, student, teacher)
    tokenizer = recipe_tokenizer(recipe, student)
    if tokenizer.vocab_size > student.config.text.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} ids, model vocab_size is "
            f"{student.config.text.vocab_size}"
        )
    if media_processor is None:
        media_processor = processor_for(student.config, tokenizer, recipe.data)
    made, info = make_dataset(
        recipe.data,
        tokenizer,
        media_processor=media_processor,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    dataset = made if dataset is None else dataset
    if info.skipped:
        log(f"data: skipped {info.skipped} bad record(s), e.g. {info.skipped_examples[0]}")
    if info.images or info.audio:
        d = recipe.data
        log(
            "data: "
            + ", ".join(
                ([f"{d.batch_size * d.max_images} image slot(s)"] if info.images else [])
                + ([f"{d.batch_size * d.max_audio_windows} audio window(s)"] if info.audio else [])
            )
            + " per micro-batch (padded rows; see docs/training.md, Images and audio)"
        )

    o = recipe.optim
    tx, schedule = st.make_optimizer(o, recipe.steps, student.params)
    trainable = st.trainable_mask(student.params, st.trainable_patterns(o))
    state, shardings = st.init_state(student.params, tx, recipe.seed, mesh)
    t_params = teacher.params if teacher is not None else None
    t_shardings = jax.tree.map(lambda x: x.sharding, t_params) if t_params is not None else None
    step_fn = st.make_train_step(
        student.module,
        tx,
        shardings,
        mesh=mesh,
        rules=m.rules,
        trainable=trainable,
        distill=recipe.distill if teacher is not None else None,
        teacher_module=teacher.module if teacher is not None else None,
        teacher_shardings=t_shardings,
        grad_accum=o.grad_accum,
    )

    run_dir = Path(recipe.run_dir)
    mngr = _checkpoint_manager(recipe)
    latest = mngr.latest_step()
    if latest is not None and not resume:
        mngr.close()
        raise FileExistsError(
            f"{mngr.directory} already holds checkpoints (latest step {latest}); "
            "resume the run (--resume) or pick another run_dir"
        )
    it = iter(dataset)
    writer = None
    start, streak, warned_blind = 0, 0, False
    spread_at: int | None = None  # the last step whose image_spread was logged
    history: list[dict[str, Any]] = []
    try:
        if latest is not None:
            _check_resume(mngr, latest, recipe, student.config.to_dict())
            try:
                state, _ = restore_checkpoint(mngr, latest, state, shardings, it)
            except (ConfigError, ckpt.CheckpointError):
                raise
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise bare errors
                raise ckpt.CheckpointError(
                    f"{mngr.directory}/{latest}: cannot resume from this "
                    f"checkpoint: {str(e).splitlines()[0][:300]}"
                ) from None
            start = latest
            log(f"resumed from {mngr.directory}/{latest}")
        elif resume:
            log(f"no checkpoint in {mngr.directory}: starting from scratch")
        log(
            _flops_line(
                mesh,
                recipe,
                st.count_params(student.params),
                st.count_params(student.params, trainable),
                st.count_params(t_params) if t_params is not None else 0,
            )
        )
        meta = {"recipe": recipe.to_dict(), "model_config": student.config.to_dict()}
        writer = (
            MetricsWriter(run_dir, resume_step=start if start else None) if is_primary() else None
        )
        progress = Progress(recipe.steps, start, enabled=recipe.progress and is_primary())
        for step in range(start + 1, recipe.steps + 1):
            t0 = time.perf_counter()
            micro, tokens = [], 0
            for _ in range(o.grad_accum):
                batch = next(it)
                b_shardings = st.batch_shardings(mesh, m.rules, batch)
                state, metrics = step_fn(state, st.put_batch(batch, b_shardings), t_params)
                micro.append(metrics)
            micro = jax.device_get(micro)
            finite = all(x["finite"] > 0 for x in micro)
            tokens = int(sum(x["input_tokens"] for x in micro))  # every process's rows
            record = {
                k: float(np.mean([x[k] for x in micro]))
                for k in micro[0]
                if k not in ("finite", "tokens", "input_tokens")
            }
            record.update(
                lr=float(np.asarray(schedule(np.int32(step - 1)))),
                tokens=tokens,
                finite=finite,
                step_time=time.perf_counter() - t0,
            )
            logged = step % recipe.log_every == 0 or step == recipe.steps or not finite
            # A second tower pass (and a compile per image grid): every 10th logged step.
            vision_due = spread_at is None or step - spread_at >= 10 * recipe.log_every
            if logged and is_primary() and (vision_due or step == recipe.steps):
                spread = image_spread(student.module, state.params, batch)
                if spread is not None:
                    spread_at = step
                    record["image_spread"] = spread
                    if spread < COLLAPSED and not warned_blind:
                        warned_blind = True
                        log(
                            f"step {step}: the vision tower's output hardly depends on the "
                            f"image (image_spread {spread:.2g}, 0.4-1 at init): the "
                            "decoder cannot see (docs/training.md, Images and audio)"
                        )
            history.append({"step": step, **record})
            if writer is not None and logged:
                writer.write(step, record)
            progress.update(step, record["loss"], tokens)
            streak = 0 if finite else streak + 1
            if not finite:
                log(
                    f"step {step}: non-finite loss/gradient (loss {record['loss']}, grad norm "
                    f"{record['grad_norm']}); update skipped ({streak} in a row)"
                )
                if streak >= o.max_nonfinite:
                    raise NonFiniteError(
                        f"stopping: {streak} consecutive non-finite steps "
                        f"(optim.max_nonfinite = {o.max_nonfinite}) at step {step}"
                    )
            if step % recipe.checkpoint.every == 0 or step == recipe.steps:
                _save(mngr, step, state, it, meta)
        mngr.wait_until_finished()
    finally:
        mngr.close()
        if hasattr(it, "close"):
            it.close()
        if writer is not None:
            writer.close()
            plot_losses(read_jsonl(writer.jsonl), run_dir / "loss.png")
    model_out = dataclasses.replace(student, params=state.params, tokenizer=tokenizer)
    if recipe.checkpoint.export:
        ckpt.save(model_out, run_dir / "model")
    return RunResult(state, model_out, history, run_dir, start)


def run_pretrain(
    recipe: TrainRecipe,
    *,
    resume: bool = False,
    model: ckpt.Model | None = None,
    media_processor: MediaProcessor | None = None,
) -> RunResult:
    """Next-token training (CE on the loss-masked tokens) as the recipe says."""
    return train(recipe, resume=resume, model=model, media_processor=media_processor)


def run_distill(
    recipe: TrainRecipe,
    *,
    resume: bool = False,
    teacher: ckpt.Model | None = None,
    model: ckpt.Model | None = None,
) -> RunResult:
    """Distill `recipe.distill.teacher` (or the `teacher` given) into the recipe's model."""
    if teacher is None:
        if not recipe.distill.teacher:
            raise ConfigError("distillation needs a teacher: set distill.teacher to a checkpoint")
        m = recipe.mesh
        mesh = make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)
        teacher = ckpt.load(
            recipe.distill.teacher,
            dtype=jnp.dtype(recipe.model.dtype),
            mesh=mesh,
            rules=m.rules,
            load_tokenizer=False,
        )
    return train(recipe, resume=resume, teacher=teacher, model=model)
