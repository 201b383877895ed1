"""`python -m infer agent`, `agent-eval` and `agent-data`: the phone agent on the simulator,
offline (the engine runs in-process; no server)."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Literal, TextIO

from autoglm_jax.agent.episodes import PHONE_SIZE, write_episodes
from autoglm_jax.agent.evaluate import BackendFactory, EvalResult, TaskResult, evaluate, run_task
from autoglm_jax.agent.local import EngineBackend, weight_bytes
from autoglm_jax.agent.loop import (
    COMPACT_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    SYSTEM_PROMPT_FILE,
    AgentConfig,
    AgentError,
    Step,
)
from autoglm_jax.agent.tasks import make_task
from autoglm_jax.checkpoint.shipped import shipped_model_dir
from infer.flags import STDERR, STDOUT, EngineFlags, ModelFlags, build_engine, warm_up

RANDOM_NOTE = "RANDOM weights: these actions are noise, not a measurement of the agent"
NAMED_PROMPTS = {"full": SYSTEM_PROMPT, "compact": COMPACT_SYSTEM_PROMPT}


def system_prompt(choice: str, model: str | None = None) -> str:
    """The system prompt `--system-prompt` names: full, compact, a text file, or auto (the
    model directory's agent_system_prompt.txt when it has one, else full)."""
    if choice == "auto":
        # A shipped model's name ("autoglm-phone-sim") is not a path: look in its asset folder.
        directory = (shipped_model_dir(model) or Path(model)) if model else None
        carried = directory / SYSTEM_PROMPT_FILE if directory else None
        if carried is not None and carried.is_file():
            return carried.read_text(encoding="utf-8").strip()
        return SYSTEM_PROMPT
    if choice in NAMED_PROMPTS:
        return NAMED_PROMPTS[choice]
    path = Path(choice)
    if not path.is_file():
        raise SystemExit(
            f"--system-prompt: {choice!r} is neither auto, full, compact nor a readable file"
        )
    return path.read_text(encoding="utf-8").strip()


@dataclasses.dataclass(frozen=True)
class AgentLoopFlags:
    max_steps: int = 20
    """Steps before the episode stops unfinished."""
    max_tokens: int = 3000
    """Reply tokens per step (the Open-AutoGLM client's default)."""
    width: int = PHONE_SIZE[0]
    """Simulated screen width in pixels."""
    height: int = PHONE_SIZE[1]
    """Simulated screen height in pixels."""
    system_prompt: str = "auto"
    """auto: the model directory's agent_system_prompt.txt if it has one, else full; full: the
    Open-AutoGLM-style prompt that lists the actions; compact: one line (what the models trained
    on the simulator use); anything else: a text file holding the prompt."""

    def config(self, model: str | None = None) -> AgentConfig:
        try:
            return AgentConfig(
                max_steps=self.max_steps,
                max_tokens=self.max_tokens,
                system_prompt=system_prompt(self.system_prompt, model),
            )
        except ValueError as e:
            raise SystemExit(str(e).replace("AgentConfig.", "--").replace("_", "-")) from None


@dataclasses.dataclass(frozen=True)
class AgentArgs:
    """Run one simulator task with the model; print each step, save the screens and a GIF."""

    task_seed: int = 0
    """Which task of the split."""
    split: Literal["train", "heldout"] = "heldout"
    out_dir: Path = Path("runs/agent")
    """Screenshots (step-NNN.png) and episode.gif go here."""
    loop: AgentLoopFlags = AgentLoopFlags()
    model: ModelFlags = ModelFlags()
    engine: EngineFlags = EngineFlags()


@dataclasses.dataclass(frozen=True)
class AgentEvalArgs:
    """Task success rate and per-step action accuracy on N simulator tasks, as a table row."""

    num_tasks: int = 20
    split: Literal["train", "heldout"] = "heldout"
    task_seed: int = 0
    """First task; tasks task_seed .. task_seed + num_tasks - 1 run."""
    docs: Path | None = None
    """Also append the row (with the date) to this markdown file."""
    label: str = ""
    """The model's name in the row (default: --model)."""
    blank_screens: bool = False
    """Show the model a blank screen at every step (the phone and the judge still see the
    real one): a control; a model that scores the same does not read the screen."""
    loop: AgentLoopFlags = AgentLoopFlags()
    model: ModelFlags = ModelFlags()
    engine: EngineFlags = EngineFlags()


@dataclasses.dataclass(frozen=True)
class AgentDataArgs:
    """Write the oracle's episodes as chat JSONL for `python -m train` (one record a step)."""

    out_dir: Path = Path("data/agent")
    num_tasks: int = 200
    task_seed: int = 0
    """First task; tasks task_seed .. task_seed + num_tasks - 1 are written."""
    split: Literal["train", "heldout"] = "train"
    width: int = PHONE_SIZE[0]
    height: int = PHONE_SIZE[1]
    system_prompt: str = "full"
    """The records' system prompt: full, compact or a text file (see `agent --help`); train
    with the one the agent will send."""
    pointing: int = 0
    """Extra one-turn "Tap <label>" records per task, on screens of its episode (teach the
    vision tower to find a label)."""
    letter_queries: float = 0.0
    """Share of train search tasks whose query is made-up letters, which only copying the
    instruction types right (the rest: listed queries and random words)."""
    goals: tuple[str, ...] = ()
    """Only tasks with these goals (OpenApp SetToggle Search AnswerDialog GoHome): the first
    num_tasks of them from task_seed on. Default: every goal. For a focused training stage,
    e.g. `--goals Search SetToggle`."""
    dense_pointing: int = 0
    """Extra records per task that ask up to 5 labels of one screen of its episode, one a
    turn (the screenshot only in the first): five pointing answers for the price of one."""
    copy_drills: int = 0
    """Extra text-only records per task of 4 turns "Type <query>" answered by that Type
    (made-up or random-word queries): a drill in copying text out of the prompt."""
    reading: int = 0
    """Extra records per task that ask what up to 5 points of one screen of its episode say
    ("What does [x, y] say?"), each answered by finish(message=<the label there>): reading
    labels, the converse of pointing."""
    episodes: bool = True
    """Write the oracle's step records; `--no-episodes` writes only the extra records above
    (e.g. pointing alone, for a vision experiment)."""


def _engine_backend(
    model: ModelFlags,
    engine_flags: EngineFlags,
    config: AgentConfig,
    timed: bool,
    screen: tuple[int, int],
) -> tuple[EngineBackend, bool]:
    """screen: (width, height) of the screenshots it will read."""
    engine = build_engine(model, engine_flags)
    if timed:  # compile every program first (the tower too), so none falls in a timed reply
        warm_up(engine, image_sizes=[screen[::-1]])
    return EngineBackend(engine, config), bool(engine.model.random_init)


def _print_step(out: TextIO, step: Step) -> None:
    action = str(step.action) if step.action is not None else "(no action)"
    print(f"step {step.index + 1}: {action}\n  -> {step.result}", file=out, flush=True)


def save_screens(result: TaskResult, out_dir: Path) -> list[Path]:
    """step-NNN.png for each screen the model saw, and episode.gif of them: one frame a step,
    numbered in a corner (Pillow would merge identical frames otherwise)."""
    from PIL import ImageDraw

    out_dir.mkdir(parents=True, exist_ok=True)
    steps = result.episode.steps
    frames, paths = [], []
    for step in steps:
        paths.append(out_dir / f"step-{step.index + 1:03d}.png")
        step.screenshot.save(paths[-1])
        frame = step.screenshot.convert("RGB")
        draw = ImageDraw.Draw(frame)
        label = f"{step.index + 1}/{len(steps)}"
        box = draw.textbbox((2, frame.height - 14), label)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill="black")
        draw.text((2, frame.height - 14), label, fill="white")
        frames.append(frame)
    if frames:
        frames[0].save(
            out_dir / "episode.gif",
            save_all=True,
            append_images=frames[1:],
            duration=800,
            loop=0,
        )
    return paths


def run_agent(
    args: AgentArgs,
    backend: BackendFactory | None = None,
    out: TextIO = STDOUT,
) -> TaskResult:
    """The `agent` command; `backend` replaces the model (tests pass the oracle)."""
    config = args.loop.config(args.model.model)
    task = make_task(args.task_seed, args.split, args.loop.width, args.loop.height)
    random = False
    if backend is None:
        # One episode: only the shapes it meets are compiled (no warmup), to start sooner.
        local, random = _engine_backend(
            args.model, args.engine, config, timed=False, screen=(args.loop.width, args.loop.height)
        )
        backend = lambda task, phone: local  # noqa: E731
    print(f"task {args.split}/{args.task_seed}: {task.instruction}", file=out, flush=True)
    try:
        result = run_task(task, backend, config, on_step=lambda s: _print_step(out, s))
    except AgentError as e:
        raise SystemExit(f"agent: {e}") from None
    save_screens(result, args.out_dir)
    print(
        f"stopped: {result.episode.stop_reason.value} after {len(result.episode.steps)} steps; "
        f"screens in {args.out_dir}",
        file=out,
    )
    if random:
        print(RANDOM_NOTE, file=out)
    print("success" if result.success else "failure", file=out, flush=True)
    return result


TABLE_HEADER = (
    "| date | model | split | tasks | task success | step accuracy | weights (bf16) | "
    "output tok/s |\n"
    "|---|---|---|---|---|---|---|---|"
)


def table_row(
    model: str, split: str, result: EvalResult, weights: int | None, tok_s: float | None
) -> str:
    date = datetime.date.today().isoformat()
    w = f"{weights / 2**20:.1f} MiB" if weights is not None else "-"
    t = f"{tok_s:.1f}" if tok_s is not None else "-"
    return (
        f"| {date} | {model} | {split} | {len(result.results)} | {result.success_rate:.2f} | "
        f"{result.step_accuracy:.2f} ({result.num_steps} steps) | {w} | {t} |"
    )


def goal_table(result: EvalResult) -> str:
    """Task success and step accuracy per kind of goal, as a markdown table."""
    lines = ["", "| goal | tasks | task success | step accuracy |", "|---|---:|---:|---:|"]
    for kind, part in sorted(result.by_goal().items()):
        lines.append(
            f"| {kind} | {len(part.results)} | {part.success_rate:.2f} | "
            f"{part.step_accuracy:.2f} ({part.num_steps} steps) |"
        )
    return "\n".join(lines)


def run_agent_eval(
    args: AgentEvalArgs,
    backend: BackendFactory | None = None,
    out: TextIO = STDOUT,
    log: TextIO = STDERR,
) -> EvalResult:
    """The `agent-eval` command; `backend` replaces the model (tests)."""
    config = args.loop.config(args.model.model)
    local, random, model = None, False, args.label or args.model.model
    if backend is None:
        local, random = _engine_backend(
            args.model, args.engine, config, timed=True, screen=(args.loop.width, args.loop.height)
        )
        backend = lambda task, phone: local  # noqa: E731
    else:
        model = args.label or getattr(backend, "__name__", "backend")

    def progress(r: TaskResult) -> None:
        mark = "ok" if r.success else "failed"
        print(f"task {r.task.seed}: {mark} in {len(r.correct)} steps", file=log, flush=True)

    try:
        result = evaluate(
            backend,
            args.num_tasks,
            args.split,
            args.task_seed,
            args.loop.width,
            args.loop.height,
            config,
            progress,
            blank_screens=args.blank_screens,
        )
    except AgentError as e:
        raise SystemExit(f"agent-eval: {e}") from None
    weights = weight_bytes(local.engine) if local is not None else None
    row = table_row(
        model
        + (" (RANDOM weights)" if random else "")
        + (" (blank screens)" if args.blank_screens else ""),
        args.split,
        result,
        weights,
        local.tokens_per_second if local is not None else None,
    )
    print(TABLE_HEADER, row, sep="\n", file=out)
    print(goal_table(result), file=out)
    if random:
        print(RANDOM_NOTE, file=out)
    if args.docs is not None:
        new = not args.docs.exists()
        with open(args.docs, "a", encoding="utf-8") as f:
            f.write((TABLE_HEADER + "\n" if new else "") + row + "\n")
    return result


def run_agent_data(args: AgentDataArgs, out: TextIO = STDOUT) -> Path:
    try:
        path = write_episodes(
            args.out_dir,
            args.num_tasks,
            args.task_seed,
            args.split,
            args.width,
            args.height,
            AgentConfig(system_prompt=system_prompt(args.system_prompt)),
            args.pointing,
            args.letter_queries,
            args.goals,
            args.dense_pointing,
            args.copy_drills,
            args.reading,
            args.episodes,
        )
    except ValueError as e:
        raise SystemExit(f"agent-data: {e}") from None
    records = sum(1 for _ in open(path, encoding="utf-8"))
    print(f"wrote {records} records ({args.num_tasks} {args.split} tasks) to {path}", file=out)
    return path
