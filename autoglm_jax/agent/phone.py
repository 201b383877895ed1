"""`SimPhone`: a small simulated Android phone that the agent loop can drive.

It has a home screen of app icons, a Settings list of toggles, two apps with a search box
(Browser, Music), a Photos app whose Delete button asks "Delete photo?", and a Maps app that
asks for the location permission until it is answered. Layouts (icon order and grid, list order,
colours, sizes, button placement) follow `PhoneSetup.seed`; the light or dark theme follows the
"Dark mode" toggle. `apply` takes one action of `actions.py`, changes the state and answers one
short line; it never raises on a well-typed action, so a model's mistakes are results, not
crashes. Actions carry relative 0..999 points; element boxes are pixels.
"""

from __future__ import annotations

import dataclasses
import random

from PIL import Image

from autoglm_jax.agent.actions import (
    Action,
    Back,
    Finish,
    Home,
    Launch,
    LongPress,
    Swipe,
    Tap,
    Type,
    Wait,
    to_pixels,
)
from autoglm_jax.agent.drawing import render
from autoglm_jax.agent.screens import APPS, HOME, TOGGLES, Dialog, Element, Layout, View, elements

DIALOGS = {
    "delete_photo": Dialog("delete_photo", "Delete photo?", ("Cancel", "Delete")),
    "location": Dialog("location", "Allow Maps to use your location?", ("Deny", "Allow")),
}


@dataclasses.dataclass(frozen=True)
class PhoneSetup:
    """How a phone starts. seed: layout and default toggle values; width, height: pixels;
    app: the open app (or "Home"); toggles: (name, on) pairs overriding the seeded defaults;
    dialog: a key of DIALOGS shown over `app`; photos: how many photos Photos holds."""

    seed: int = 0
    width: int = 252
    height: int = 448
    app: str = HOME
    toggles: tuple[tuple[str, bool], ...] = ()
    dialog: str | None = None
    photos: int = 3


class SimPhone:
    """A phone's mutable state; `screenshot`, `apply` and `current_app` are what the loop uses.

    For checkers and oracles: `view` (a frozen snapshot of everything on screen: open app,
    toggles, Settings scroll, search text and focus, results, photos, location permission,
    dialog), `elements` (what a tap can reach now), and the histories `searches` ((app, query)
    submitted), `answers` ((dialog key, button) tapped), `log` (every result line) and
    `finished` (the Finish message, or None).
    """

    def __init__(self, setup: PhoneSetup = PhoneSetup()):
        unknown = {name for name, _ in setup.toggles} - set(TOGGLES)
        if setup.app not in APPS + (HOME,) or unknown or setup.dialog not in (None, *DIALOGS):
            raise ValueError(f"bad phone setup: {setup}")
        self.setup = setup
        self.layout = Layout.from_seed(setup.seed, setup.width, setup.height)
        rng = random.Random(f"toggles:{setup.seed}")
        toggles = {name: rng.random() < 0.5 for name in TOGGLES} | dict(setup.toggles)
        self.view = View(toggles=tuple(toggles.items()), photos=setup.photos)
        self.searches: list[tuple[str, str]] = []
        self.answers: list[tuple[str, str]] = []
        self.log: list[str] = []
        self.finished: str | None = None
        if setup.app != HOME:
            self._open(setup.app)
        if setup.dialog is not None:
            self._set(dialog=DIALOGS[setup.dialog])

    # ---- what the agent loop uses ----

    @property
    def current_app(self) -> str:
        """The open app's name, or "Home" on the home screen."""
        return self.view.app

    def screenshot(self) -> Image.Image:
        """The screen as an RGB image of width x height pixels."""
        return render(self.layout, self.view)

    def apply(self, action: Action) -> str:
        """Carry out one action; returns a short line saying what happened."""
        handlers = {
            Launch: self._launch,
            Tap: self._tap,
            LongPress: self._long_press,
            Type: self._type,
            Swipe: self._swipe,
            Back: self._back,
            Home: lambda _: self._go_home(),
            Wait: lambda a: f"waited {a.seconds:g} s",
            Finish: self._finish,
        }
        handler = handlers.get(type(action))
        if handler is None:
            raise ValueError(f"not an action: {action!r}")
        result = handler(action)
        self.log.append(result)
        return result

    # ---- reading the state ----

    @property
    def width(self) -> int:
        return self.layout.width

    @property
    def height(self) -> int:
        return self.layout.height

    @property
    def dialog(self) -> Dialog | None:
        return self.view.dialog

    @property
    def toggles(self) -> dict[str, bool]:
        return dict(self.view.toggles)

    @property
    def elements(self) -> tuple[Element, ...]:
        """The elements a tap can reach now, boxes in pixels."""
        return elements(self.layout, self.view)

    def element(self, label: str) -> Element | None:
        """The reachable element drawn with this label, if any."""
        return next((e for e in self.elements if e.label == label), None)

    def element_at(self, x: int, y: int) -> Element | None:
        """The reachable element under pixel (x, y), if any."""
        return next((e for e in self.elements if e.box.contains(x, y)), None)

    # ---- transitions ----

    def _set(self, **changes) -> None:
        self.view = dataclasses.replace(self.view, **changes)

    def _open(self, app: str) -> str:
        """Show `app` (or the home screen) as freshly started: no scroll, text or keyboard."""
        # Maps asks on every start until the question is answered, as Android apps do.
        asks = app == "Maps" and self.view.location is None
        self._set(
            app=app,
            scroll=0,
            text="",
            focused=False,
            results_for=None,
            dialog=DIALOGS["location"] if asks else None,
        )
        return f"opened {app}" + ("; it asks for location access" if asks else "")

    def _go_home(self) -> str:
        self._open(HOME)
        return "went to the home screen"

    def _launch(self, action: Launch) -> str:
        app = next((a for a in APPS if a.casefold() == action.app.strip().casefold()), None)
        if app is None:
            return f'no app named "{action.app}"'
        return self._open(app)

    def _point(self, point: tuple[int, int]) -> tuple[int, int]:
        return to_pixels(point, self.width, self.height)

    def _tap(self, action: Tap) -> str:
        element = self.element_at(*self._point(action.element))
        if element is None:
            return f"nothing to tap at ({action.element[0]}, {action.element[1]})"
        if element.kind == "app":
            return self._open(element.label)
        if element.kind == "toggle":
            on = not self.toggles[element.label]
            self._set(toggles=tuple((self.toggles | {element.label: on}).items()))
            return f"{element.label}: {'on' if on else 'off'}"
        if element.kind == "text_box":
            self._set(focused=True)
            return "focused the search box"
        if element.kind == "dialog_button":
            return self._answer(element.label)
        if element.label == "Search":
            return self._submit()
        self._set(dialog=DIALOGS["delete_photo"])  # the Photos Delete button
        return "asked: Delete photo?"

    def _submit(self) -> str:
        query = self.view.text.strip()
        if not query:
            return "nothing to search for: the search box is empty"
        self.searches.append((self.current_app, query))
        self._set(results_for=query, focused=False)
        return f'searched {self.current_app} for "{query}"'

    def _answer(self, button: str) -> str:
        dialog = self.view.dialog
        self.answers.append((dialog.key, button))
        self._set(dialog=None)
        if (dialog.key, button) == ("delete_photo", "Delete"):
            self._set(photos=self.view.photos - 1)
        if dialog.key == "location":
            self._set(location=button == "Allow")
        return f"{dialog.title} {button}"

    def _long_press(self, action: LongPress) -> str:
        element = self.element_at(*self._point(action.element))
        if element is None:
            return f"nothing to press at ({action.element[0]}, {action.element[1]})"
        return f"long-pressed {element.label}: nothing happens"

    def _type(self, action: Type) -> str:
        if not self.view.focused:
            return "no text box is focused; typing ignored"
        self._set(text=action.text)  # Open-AutoGLM's ADB keyboard also clears the field first
        return f'typed "{action.text}"'

    def _swipe(self, action: Swipe) -> str:
        if self.current_app != "Settings" or self.dialog is not None:
            return "nothing to scroll here"
        (_, y0), (_, y1) = self._point(action.start), self._point(action.end)
        rows = round(abs(y0 - y1) / self.layout.row_height)  # a finger moving up scrolls down
        if rows == 0:
            return "swipe too short to scroll"
        scroll = self.view.scroll + (rows if y1 < y0 else -rows)
        scroll = min(self.layout.max_scroll, max(0, scroll))
        if scroll == self.view.scroll:
            return "the list is already at its end"
        self._set(scroll=scroll)
        return f"scrolled Settings to row {scroll}"

    def _back(self, _: Back) -> str:
        view = self.view
        if view.dialog is not None:
            self._set(dialog=None)
            return "closed the dialog"
        if view.focused:
            self._set(focused=False)
            return "closed the keyboard"
        if view.results_for is not None:
            self._set(results_for=None)
            return "back to the search page"
        if view.app == HOME:
            return "already on the home screen"
        self._open(HOME)
        return "back to the home screen"

    def _finish(self, action: Finish) -> str:
        self.finished = action.message
        return f"finished: {action.message}"
