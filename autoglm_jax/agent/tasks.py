"""Seeded phone tasks with a checker and an oracle, for training data and step-level evaluation.

A `Task` is an instruction, the `PhoneSetup` it starts from and a goal. `task.done(phone)` reads
the phone's state to say whether the goal is met; `task.next_action(phone)` is the oracle: the
correct next action from the current state, deterministic, and `Finish` once the goal is met.
The oracle reads the state afresh each step, so it recovers from detours (wrong app, closed
dialog, scrolled list, text typed into the wrong place); the only dead ends are those the
instruction forbids undoing (the dialog already answered otherwise), where it finishes saying so.
Taps aim at the centre of the target element, in relative 0..999 coordinates.

Goals and the oracle's route:
- OpenApp: Launch (a tap on its home-screen icon is judged correct too).
- SetToggle: Launch Settings, swipe until the row shows, tap it.
- Search: Launch the app, tap the search box, Type the query, tap Search.
- AnswerDialog: tap the button; a closed dialog is opened again (Photos' Delete button, or
  Launch Maps, which asks until answered).
- GoHome: Home.

The split (`make_task(seed, split)`): every wording template and search query belongs to
exactly one split (agent.wordings), and held-out layouts use odd layout seeds while train uses
even ones, so no held-out wording, query or layout seed is ever produced for train.
Apps, toggles and dialogs themselves are shared: the held-out split tests new phrasings and
new looks, not new skills.
"""

from __future__ import annotations

import dataclasses
import random
import typing

from autoglm_jax.agent.actions import (
    Action,
    Back,
    Finish,
    Home,
    Launch,
    Swipe,
    Tap,
    Type,
    to_pixels,
    to_relative,
)
from autoglm_jax.agent.phone import DIALOGS, PhoneSetup, SimPhone
from autoglm_jax.agent.screens import APPS, HOME, SEARCH_APPS, TOGGLES, Box, Element
from autoglm_jax.agent.wordings import QUERIES, TEMPLATES, train_query

SPLITS = ("train", "heldout")

# ---- goals: a checker and an oracle each ----


def _tap(phone: SimPhone, element: Element) -> Tap:
    return Tap(to_relative(element.box.center, phone.width, phone.height))


def _open(phone: SimPhone, app: str) -> Launch:
    """Open `app` by name, from any screen: the Open-AutoGLM prompt tells the model that Launch
    beats navigating the home screen, and it takes no pixels to get right."""
    return Launch(app)


def _home_icon(phone: SimPhone, app: str) -> Element | None:
    """`app`'s icon, where the home screen shows it (a tap on it equals Launch)."""
    return phone.element(app) if phone.current_app == HOME and phone.dialog is None else None


@dataclasses.dataclass(frozen=True)
class OpenApp:
    app: str

    def done(self, phone: SimPhone) -> bool:
        return phone.current_app == self.app

    def next_action(self, phone: SimPhone) -> Action:
        return Finish(f"Opened {self.app}") if self.done(phone) else _open(phone, self.app)


@dataclasses.dataclass(frozen=True)
class SetToggle:
    name: str
    on: bool

    def done(self, phone: SimPhone) -> bool:
        return phone.toggles[self.name] == self.on

    def next_action(self, phone: SimPhone) -> Action:
        if self.done(phone):
            return Finish(f"{self.name} is {'on' if self.on else 'off'}")
        if phone.current_app != "Settings" or phone.dialog is not None:
            return _open(phone, "Settings")
        row = phone.element(self.name)
        return _tap(phone, row) if row is not None else _scroll_towards(phone, self.name)


def _scroll_towards(phone: SimPhone, name: str) -> Swipe:
    """A vertical swipe through the middle of the Settings list that brings `name` into view."""
    layout = phone.layout
    index, first = layout.toggle_order.index(name), phone.view.scroll
    # rows to scroll down (positive) or up (negative), at most a screenful less one per swipe
    rows = index - (first + layout.visible_rows - 1) if index > first else index - first
    rows = max(-(layout.visible_rows - 1), min(layout.visible_rows - 1, rows))
    middle = (layout.content_top + layout.height) // 2
    x, half = layout.width // 2, abs(rows) * layout.row_height // 2
    start, end = (middle + half, middle - half) if rows > 0 else (middle - half, middle + half)
    return Swipe(
        to_relative((x, start), layout.width, layout.height),
        to_relative((x, end), layout.width, layout.height),
    )


@dataclasses.dataclass(frozen=True)
class Search:
    app: str
    query: str

    def done(self, phone: SimPhone) -> bool:
        return any(
            app == self.app and query.casefold() == self.query.casefold()
            for app, query in phone.searches
        )

    def next_action(self, phone: SimPhone) -> Action:
        if self.done(phone):
            return Finish(f'Searched {self.app} for "{self.query}"')
        if phone.current_app != self.app or phone.dialog is not None:
            return _open(phone, self.app)
        if phone.view.text.strip().casefold() == self.query.casefold():
            return _tap(phone, phone.element("Search"))
        if not phone.view.focused:
            return _tap(phone, phone.element("search box"))
        return Type(self.query)


@dataclasses.dataclass(frozen=True)
class AnswerDialog:
    dialog: str  # a key of phone.DIALOGS
    button: str

    def done(self, phone: SimPhone) -> bool:
        answers = [button for key, button in phone.answers if key == self.dialog]
        return answers[:1] == [self.button]

    def next_action(self, phone: SimPhone) -> Action:
        answers = [button for key, button in phone.answers if key == self.dialog]
        if answers:  # the first answer counts: a wrong one cannot be taken back
            return Finish(
                f"Tapped {self.button}"
                if answers[0] == self.button
                else f'Cannot tap {self.button}: "{answers[0]}" was chosen'
            )
        if phone.dialog is not None:
            if phone.dialog.key == self.dialog:
                return _tap(phone, phone.element(self.button))
            return Back()  # some other question is in the way
        if self.dialog == "location":
            return _open(phone, "Maps")  # Maps asks again on every start until answered
        if phone.current_app != "Photos":
            return _open(phone, "Photos")
        delete = phone.element("Delete")
        return _tap(phone, delete) if delete is not None else Finish("Cannot: no photo is left")


@dataclasses.dataclass(frozen=True)
class GoHome:
    def done(self, phone: SimPhone) -> bool:
        return phone.current_app == HOME

    def next_action(self, phone: SimPhone) -> Action:
        return Finish("On the home screen") if self.done(phone) else Home()


Goal = OpenApp | SetToggle | Search | AnswerDialog | GoHome
GOALS = tuple(goal.__name__ for goal in typing.get_args(Goal))  # the goal class names


@dataclasses.dataclass(frozen=True)
class Task:
    """One episode: `instruction` for the model, `setup` for a fresh phone, the `goal` behind
    `done` (checker) and `next_action` (oracle). `template` is the wording before filling in."""

    instruction: str
    goal: Goal
    setup: PhoneSetup
    template: str
    split: str
    seed: int

    def new_phone(self) -> SimPhone:
        return SimPhone(self.setup)

    def done(self, phone: SimPhone) -> bool:
        return self.goal.done(phone)

    def next_action(self, phone: SimPhone) -> Action:
        return self.goal.next_action(phone)

    def phone_after(self, steps: int) -> SimPhone:
        """A fresh phone after the oracle's first `steps` actions (fewer where it finishes
        sooner): screens partway through the task, for probes and vision labels."""
        phone = self.new_phone()
        for _ in range(steps):
            action = self.next_action(phone)
            if isinstance(action, Finish):
                break
            phone.apply(action)
        return phone


# ---- the generator ----


def make_task(
    seed: int,
    split: str = "train",
    width: int = 252,
    height: int = 448,
    letter_queries: float = 0.0,
) -> Task:
    """The task numbered `seed` of `split` ("train" or "heldout") on a width x height pixel
    screen; a train search task's query is made-up letters with probability `letter_queries`
    (`wordings.train_query`). The same arguments always give the same task."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    heldout = split == "heldout"
    rng = random.Random(f"{split}:{seed}")
    layout_seed = 2 * rng.randrange(2**30) + heldout  # train even, held out odd
    other_app = rng.choice(APPS)
    kind = rng.choices(("open", "toggle", "search", "dialog", "home"), (2, 3, 2, 2, 1))[0]
    fields: dict[str, str] = {}
    app, toggles, dialog = HOME, (), None
    if kind == "open":
        target = rng.choice(APPS)
        goal, fields["app"] = OpenApp(target), target
        if rng.random() < 0.3 and other_app != target:
            app = other_app
    elif kind == "toggle":
        name, on = rng.choice(TOGGLES), rng.random() < 0.5
        goal, toggles, fields["name"] = SetToggle(name, on), ((name, not on),), name
        kind = "toggle_on" if on else "toggle_off"
        app = rng.choices((HOME, "Settings", other_app), (6, 3, 1))[0]
    elif kind == "search":
        target = rng.choice(sorted(SEARCH_APPS))
        query = (
            rng.choice(QUERIES[target][1]) if heldout else train_query(rng, target, letter_queries)
        )
        goal, fields["app"], fields["query"] = Search(target, query), target, query
        app = rng.choice((HOME, HOME, target, other_app))
    elif kind == "dialog":
        key = rng.choice(sorted(DIALOGS))
        button = rng.choice(DIALOGS[key].buttons)
        goal, kind, dialog = AnswerDialog(key, button), f"{key}:{button}", key
        app = "Photos" if key == "delete_photo" else "Maps"
    else:
        goal, app = GoHome(), other_app
    template = rng.choice(TEMPLATES[kind][heldout])
    setup = PhoneSetup(
        seed=layout_seed,
        width=width,
        height=height,
        app=app,
        toggles=toggles,
        dialog=dialog,
        photos=rng.randint(1, 5),
    )
    return Task(
        instruction=template.format(**fields),
        goal=goal,
        setup=setup,
        template=template,
        split=split,
        seed=seed,
    )


def oracle_episode(task: Task, max_steps: int = 20) -> tuple[list[Action], SimPhone]:
    """The oracle's actions on a fresh phone, up to and including its Finish, and that phone."""
    phone, actions = task.new_phone(), []
    while len(actions) < max_steps:
        action = task.next_action(phone)
        actions.append(action)
        phone.apply(action)
        if isinstance(action, Finish):
            break
    return actions, phone


# ---- judging a model's step against the oracle ----


def target_box(task: Task, phone: SimPhone) -> Box | None:
    """The pixel box of the element the oracle would tap now, or None if its action is no tap."""
    action = task.next_action(phone)
    if not isinstance(action, Tap):
        return None
    return phone.element_at(*to_pixels(action.element, phone.width, phone.height)).box


def step_is_correct(task: Task, phone: SimPhone, action: Action) -> bool:
    """Whether `action` is a correct next step: a tap inside the oracle's target element, a
    swipe the same vertical way, the same app for Launch (or a tap on its home-screen icon,
    which opens it as well), the same text for Type (outer spaces aside), any Finish when the oracle
    finishes, and otherwise the same kind of action."""
    expected = task.next_action(phone)
    if isinstance(expected, Tap):
        target = phone.element_at(*to_pixels(expected.element, phone.width, phone.height))
        return isinstance(action, Tap) and target.box.contains(
            *to_pixels(action.element, phone.width, phone.height)
        )
    if isinstance(expected, Swipe):
        return (
            isinstance(action, Swipe)
            and (action.end[1] - action.start[1]) * (expected.end[1] - expected.start[1]) > 0
        )
    if isinstance(expected, Launch):
        if isinstance(action, Tap):
            icon = _home_icon(phone, expected.app)
            return icon is not None and icon.box.contains(
                *to_pixels(action.element, phone.width, phone.height)
            )
        return (
            isinstance(action, Launch) and action.app.strip().casefold() == expected.app.casefold()
        )
    if isinstance(expected, Type):
        return isinstance(action, Type) and action.text.strip() == expected.text.strip()
    return type(action) is type(expected)
