"""The phone agent: the AutoGLM-Phone action language, a simulated phone with tasks, and the
agent loop that drives a phone through any OpenAI-compatible endpoint.

    task = make_task(seed=0, split="heldout")
    episode = run_episode(task.new_phone(), task.instruction, AgentConfig(base_url=...))
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
from autoglm_jax.agent.tasks import Task, make_task, oracle_episode, step_is_correct, target_box

__all__ = [
    "SYSTEM_PROMPT",
    "Action",
    "ActionError",
    "AgentConfig",
    "AgentError",
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
    "Type",
    "Wait",
    "make_task",
    "oracle_episode",
    "parse_action",
    "run_episode",
    "split_reply",
    "step_is_correct",
    "target_box",
]
