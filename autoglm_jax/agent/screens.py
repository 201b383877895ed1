"""Where things are on the simulated phone's screens: seeded layouts and element boxes.

Everything here is pure: a `Layout` (fixed per phone seed and screen size) and a `View` (what the
phone's state puts on screen) give the interactive `Element`s with their pixel boxes;
`drawing.render` draws from the same geometry, so a box is always where its element is drawn.
All coordinates here are pixels; the action language's relative 0..999 points are converted in
`phone.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random

from PIL import ImageFont

APPS = (
    "Settings",
    "Messages",
    "Camera",
    "Clock",
    "Maps",
    "Music",
    "Notes",
    "Browser",
    "Weather",
    "Calendar",
    "Photos",
    "Contacts",
)
TOGGLES = (
    "Wi-Fi",
    "Bluetooth",
    "Airplane mode",
    "Dark mode",
    "Location",
    "Mobile data",
    "Hotspot",
    "Do not disturb",
    "Auto-rotate",
    "Battery saver",
)
SEARCH_APPS = {"Browser": "Search the web", "Music": "Search songs"}  # app -> placeholder
HOME = "Home"  # `View.app` on the home screen

_ICON_COLOURS = (
    (66, 133, 244),
    (219, 68, 55),
    (244, 180, 0),
    (15, 157, 88),
    (171, 71, 188),
    (0, 172, 193),
    (255, 112, 67),
    (92, 107, 192),
    (124, 179, 66),
    (236, 64, 122),
    (121, 85, 72),
    (84, 110, 122),
)
_ACCENTS = ((26, 115, 232), (0, 137, 123), (142, 36, 170), (230, 81, 0), (67, 160, 71))


@dataclasses.dataclass(frozen=True)
class Box:
    """A pixel rectangle: left and top inclusive, right and bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    def contains(self, x: float, y: float) -> bool:
        return self.left <= x < self.right and self.top <= y < self.bottom

    @property
    def center(self) -> tuple[int, int]:
        return (self.left + self.right) // 2, (self.top + self.bottom) // 2

    def overlaps(self, other: Box) -> bool:
        return (
            self.left < other.right
            and other.left < self.right
            and self.top < other.bottom
            and other.top < self.bottom
        )

    def inside(self, width: int, height: int) -> bool:
        return 0 <= self.left < self.right <= width and 0 <= self.top < self.bottom <= height


@dataclasses.dataclass(frozen=True)
class Element:
    """One tappable thing on screen. kind: "app", "toggle", "text_box", "button" or
    "dialog_button"; label: the app, toggle or button name as drawn; box in pixels."""

    kind: str
    label: str
    box: Box


@dataclasses.dataclass(frozen=True)
class Dialog:
    """A modal dialog: `key` names it for checkers ("delete_photo"), buttons in drawing order."""

    key: str
    title: str
    buttons: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class View:
    """What the phone's state puts on screen (everything rendering and hit-testing needs)."""

    app: str = HOME
    toggles: tuple[tuple[str, bool], ...] = ()  # (name, on) for every toggle
    scroll: int = 0  # Settings rows scrolled off the top
    text: str = ""  # the search box of `app`
    focused: bool = False  # the search box has the keyboard
    results_for: str | None = None  # the query whose results are shown
    photos: int = 0
    location: bool | None = None  # Maps' permission: None until answered
    dialog: Dialog | None = None

    @property
    def dark(self) -> bool:
        """The theme follows the Dark mode toggle."""
        return dict(self.toggles).get("Dark mode", False)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The seeded look of one phone; all lengths in pixels of a width x height screen."""

    width: int
    height: int
    app_order: tuple[str, ...]
    columns: int
    grid_left: int
    grid_top: int
    icon: int  # icon side
    cell_height: int
    toggle_order: tuple[str, ...]
    row_height: int
    accent: tuple[int, int, int]
    icon_colours: tuple[tuple[int, int, int], ...]  # one per entry of app_order
    search_button_below: bool  # else right of the search box
    dialog_buttons_reversed: bool
    dialog_buttons_stacked: bool
    delete_button_side: int  # -1 left, 0 centre, 1 right

    @classmethod
    def from_seed(cls, seed: int, width: int = 252, height: int = 448) -> Layout:
        rng = random.Random(seed)
        scale = _scale(width, height)
        columns = rng.choice((3, 4))
        rows = math.ceil(len(APPS) / columns)
        grid_left = round(width * rng.uniform(0.03, 0.08))
        cell_width = (width - 2 * grid_left) // columns
        icon = round(min(cell_width * rng.uniform(0.55, 0.72), 56 * scale))
        cell_height = icon + font_size(11, scale) + 6 + round(rng.uniform(8, 22) * scale)
        top_min = _status_height(height) + round(0.03 * height)
        slack = max(0, height - top_min - rows * cell_height - round(0.02 * height))
        return cls(
            width=width,
            height=height,
            app_order=tuple(rng.sample(APPS, len(APPS))),
            columns=columns,
            grid_left=grid_left,
            grid_top=top_min + rng.randint(0, slack),
            icon=icon,
            cell_height=cell_height,
            toggle_order=tuple(rng.sample(TOGGLES, len(TOGGLES))),
            row_height=round(rng.uniform(40, 52) * scale),
            accent=rng.choice(_ACCENTS),
            icon_colours=tuple(rng.choice(_ICON_COLOURS) for _ in APPS),
            search_button_below=rng.random() < 0.5,
            dialog_buttons_reversed=rng.random() < 0.5,
            dialog_buttons_stacked=rng.random() < 0.3,
            delete_button_side=rng.choice((-1, 0, 1)),
        )

    @property
    def scale(self) -> float:
        return _scale(self.width, self.height)

    @property
    def status_height(self) -> int:
        return _status_height(self.height)

    @property
    def content_top(self) -> int:
        """First pixel row below an app's title bar."""
        return self.status_height + round(0.09 * self.height)

    @property
    def visible_rows(self) -> int:
        """Settings rows that fit wholly on screen."""
        return (self.height - self.content_top) // self.row_height

    @property
    def max_scroll(self) -> int:
        return max(0, len(self.toggle_order) - self.visible_rows)


def _scale(width: int, height: int) -> float:
    return min(width / 252, height / 448)


def _status_height(height: int) -> int:
    return round(0.05 * height)


def font_size(base: int, scale: float) -> int:
    """A font size in pixels: `base` on the default 252 x 448 screen, scaled, never below 9."""
    return max(9, round(base * scale))


@functools.lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels: nothing is downloaded."""
    return ImageFont.load_default(size=size)


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """`text` broken at spaces into lines of at most `width` pixels (a long word overflows)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


# ---- geometry: the interactive elements of each screen ----


def home_elements(layout: Layout) -> tuple[Element, ...]:
    cell_width = (layout.width - 2 * layout.grid_left) // layout.columns
    elements = []
    for i, app in enumerate(layout.app_order):
        row, col = divmod(i, layout.columns)
        left = layout.grid_left + col * cell_width
        top = layout.grid_top + row * layout.cell_height
        label_bottom = top + layout.icon + font_size(11, layout.scale) + 6
        box = Box(left + 2, top, left + cell_width - 2, label_bottom)
        elements.append(Element("app", app, box))
    return tuple(elements)


def settings_elements(layout: Layout, scroll: int) -> tuple[Element, ...]:
    margin = round(6 * layout.scale)
    elements = []
    for row, name in enumerate(layout.toggle_order[scroll : scroll + layout.visible_rows]):
        top = layout.content_top + row * layout.row_height
        box = Box(margin, top + 1, layout.width - margin, top + layout.row_height - 1)
        elements.append(Element("toggle", name, box))
    return tuple(elements)


def search_elements(layout: Layout) -> tuple[Element, ...]:
    s, margin = layout.scale, round(10 * layout.scale)
    top, field_height = layout.content_top + round(6 * s), round(34 * s)
    button_width = round(64 * s)
    if layout.search_button_below:
        box = Box(margin, top, layout.width - margin, top + field_height)
        button_top = box.bottom + round(8 * s)
        button = Box(
            layout.width - margin - button_width,
            button_top,
            layout.width - margin,
            button_top + field_height,
        )
    else:
        button = Box(
            layout.width - margin - button_width, top, layout.width - margin, top + field_height
        )
        box = Box(margin, top, button.left - round(6 * s), top + field_height)
    return Element("text_box", "search box", box), Element("button", "Search", button)


def photos_elements(layout: Layout, photos: int) -> tuple[Element, ...]:
    if photos == 0:
        return ()
    s = layout.scale
    width, height = round(90 * s), round(36 * s)
    centre = layout.width // 2 + layout.delete_button_side * round(layout.width * 0.27)
    bottom = layout.height - round(20 * s)
    return (
        Element(
            "button",
            "Delete",
            Box(centre - width // 2, bottom - height, centre + width // 2, bottom),
        ),
    )


def dialog_panel(layout: Layout, dialog: Dialog) -> tuple[Box, list[str]]:
    """The dialog's panel box and its title wrapped into lines."""
    s = layout.scale
    width = round(layout.width * 0.84)
    lines = wrap(dialog.title, load_font(font_size(14, s)), width - round(24 * s))
    button_height, gap = round(38 * s), round(8 * s)
    stacked = layout.dialog_buttons_stacked
    buttons_height = len(dialog.buttons) * (button_height + gap) if stacked else button_height + gap
    height = round(20 * s) + len(lines) * font_size(18, s) + round(12 * s) + buttons_height
    left, top = (layout.width - width) // 2, (layout.height - height) // 2
    return Box(left, top, left + width, top + height), lines


def dialog_elements(layout: Layout, dialog: Dialog) -> tuple[Element, ...]:
    panel, _ = dialog_panel(layout, dialog)
    s = layout.scale
    button_height, gap, pad = round(38 * s), round(8 * s), round(12 * s)
    names = dialog.buttons[::-1] if layout.dialog_buttons_reversed else dialog.buttons
    if layout.dialog_buttons_stacked:
        tops = [panel.bottom - (len(names) - i) * (button_height + gap) for i in range(len(names))]
        return tuple(
            Element(
                "dialog_button",
                name,
                Box(panel.left + pad, top, panel.right - pad, top + button_height),
            )
            for name, top in zip(names, tops)
        )
    top = panel.bottom - gap - button_height
    width = (panel.right - panel.left - 2 * pad - gap * (len(names) - 1)) // len(names)
    return tuple(
        Element(
            "dialog_button",
            name,
            Box(
                panel.left + pad + i * (width + gap),
                top,
                panel.left + pad + i * (width + gap) + width,
                top + button_height,
            ),
        )
        for i, name in enumerate(names)
    )


def elements(layout: Layout, view: View) -> tuple[Element, ...]:
    """The elements a tap can reach: a dialog's buttons hide everything below it."""
    if view.dialog is not None:
        return dialog_elements(layout, view.dialog)
    if view.app == HOME:
        return home_elements(layout)
    if view.app == "Settings":
        return settings_elements(layout, view.scroll)
    if view.app in SEARCH_APPS:
        return search_elements(layout)
    if view.app == "Photos":
        return photos_elements(layout, view.photos)
    return ()
