"""The phone agent: the AutoGLM-Phone action language, a simulated phone with tasks, and the
agent loop that drives a phone through any OpenAI-compatible endpoint or an in-process engine.

    task = make_task(seed=0, split="heldout")
    episode = run_episode(task.new_phone(), task.instruction, AgentConfig(base_url=...))
    episode = run_episode(phone, instruction, config, backend=EngineBackend(engine, config))
    write_episodes("data/agent", num_tasks=200)  # oracle steps as chat JSONL for training
    evaluate(lambda task, phone: backend, num_tasks=20)  # task success, step accuracy
"""

from autoglm_jax.agent.actions import (
    Action,
    ActionError,
    Back,
    Finish,
    Home,
    Launch,
    LongPress,
    Swipe,
    Tap,
    Type,
    Wait,
    parse_action,
    split_reply,
)
from autoglm_jax.agent.episodes import write_episodes
from autoglm_jax.agent.evaluate import EvalResult, TaskResult, evaluate, oracle_backend, run_task
from autoglm_jax.agent.local import EngineBackend
from autoglm_jax.agent.loop import (
    SYSTEM_PROMPT,
    AgentConfig,
    AgentError,
    Episode,
    Phone,
    Step,
    StopReason,
    run_episode,
)
from autoglm_jax.agent.phone import PhoneSetup, SimPhone
from autoglm_jax.agent.screen_labels import SCREEN_CLASSES, labelled_screens, token_labels
from autoglm_jax.agent.tasks import Task, make_task, oracle_episode, step_is_correct, target_box

__all__ = [
    "SCREEN_CLASSES",
    "SYSTEM_PROMPT",
    "Action",
    "ActionError",
    "AgentConfig",
    "AgentError",
    "EngineBackend",
    "EvalResult",
    "Back",
    "Episode",
    "Finish",
    "Home",
    "Launch",
    "LongPress",
    "Phone",
    "PhoneSetup",
    "SimPhone",
    "Step",
    "StopReason",
    "Swipe",
    "Tap",
    "Task",
    "TaskResult",
    "Type",
    "Wait",
    "evaluate",
    "labelled_screens",
    "make_task",
    "oracle_backend",
    "oracle_episode",
    "parse_action",
    "run_episode",
    "run_task",
    "split_reply",
    "step_is_correct",
    "target_box",
    "token_labels",
    "write_episodes",
]
