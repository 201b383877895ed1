"""Pillow drawing of the simulated phone's screens, from the geometry in `screens.py`.

Only decoration lives here (colours, icons, the keyboard, results); every tappable thing is
drawn inside the box `screens.elements` gives it. Coordinates are pixels.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from autoglm_jax.agent.screens import (
    HOME,
    SEARCH_APPS,
    Box,
    Dialog,
    Layout,
    View,
    dialog_elements,
    dialog_panel,
    font_size,
    home_elements,
    load_font,
    photos_elements,
    search_elements,
    settings_elements,
)

# Decorative lines of the apps that have no interactive content; they make screens tell apart.
_APP_LINES = {
    "Messages": ("Anna: See you at 7?", "Mum: Call me back", "Bank: Code 4821"),
    "Camera": ("Photo  Video  Portrait",),
    "Clock": ("07:30  Alarm", "Mon Tue Wed Thu Fri"),
    "Maps": (),
    "Notes": ("Shopping list", "Ideas for the trip"),
    "Weather": ("Sunny  21°", "Tomorrow: rain 15°"),
    "Calendar": ("Today: Dentist 10:00", "Fri: Team lunch"),
    "Contacts": ("Anna Berg", "Ben Carter", "Chloe Diaz"),
}
_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _colours(layout: Layout, dark: bool) -> dict[str, tuple[int, int, int]]:
    if dark:
        return dict(
            background=(18, 18, 22),
            surface=(44, 44, 52),
            text=(236, 236, 240),
            subtext=(160, 160, 170),
            line=(70, 70, 80),
            accent=layout.accent,
        )
    return dict(
        background=(248, 248, 250),
        surface=(228, 230, 236),
        text=(20, 20, 28),
        subtext=(100, 100, 112),
        line=(210, 210, 218),
        accent=layout.accent,
    )


def render(layout: Layout, view: View) -> Image.Image:
    """The RGB screenshot (layout.width x layout.height pixels) of `view`."""
    colours = _colours(layout, view.dark)
    image = Image.new("RGB", (layout.width, layout.height), colours["background"])
    draw = ImageDraw.Draw(image)
    _draw_status_bar(draw, layout, view, colours)
    if view.app == HOME:
        _draw_home(draw, layout, colours)
    else:
        _draw_title(draw, layout, view.app, colours)
        if view.app == "Settings":
            _draw_settings(draw, layout, view, colours)
        elif view.app in SEARCH_APPS:
            _draw_search(draw, layout, view, colours)
        elif view.app == "Photos":
            _draw_photos(draw, layout, view, colours)
        else:
            _draw_plain_app(draw, layout, view, colours)
    if view.dialog is not None:
        image = Image.blend(image, Image.new("RGB", image.size, (0, 0, 0)), 0.5)
        _draw_dialog(ImageDraw.Draw(image), layout, view.dialog, colours)
    return image


def _centred_text(draw, box: Box, text: str, font, fill) -> None:
    draw.text(box.center, text, font=font, fill=fill, anchor="mm")


def _draw_status_bar(draw, layout, view, colours) -> None:
    font = load_font(font_size(10, layout.scale))
    middle = layout.status_height // 2
    draw.text((8, middle), "9:41", font=font, fill=colours["text"], anchor="lm")
    on = dict(view.toggles)
    signs = [
        sign
        for name, sign in (("Airplane mode", "AIR"), ("Wi-Fi", "WiFi"), ("Bluetooth", "BT"))
        if on.get(name)
    ]
    draw.text(
        (layout.width - 8, middle),
        "  ".join(signs + ["87%"]),
        font=font,
        fill=colours["text"],
        anchor="rm",
    )


def _draw_home(draw, layout, colours) -> None:
    font = load_font(font_size(11, layout.scale))
    letter_font = load_font(max(10, layout.icon // 2))
    colour_of = dict(zip(layout.app_order, layout.icon_colours))
    for element in home_elements(layout):
        box = element.box
        x0 = (box.left + box.right - layout.icon) // 2
        icon = Box(x0, box.top, x0 + layout.icon, box.top + layout.icon)
        draw.rounded_rectangle(
            (icon.left, icon.top, icon.right - 1, icon.bottom - 1),
            radius=layout.icon // 4,
            fill=colour_of[element.label],
        )
        _centred_text(draw, icon, element.label[0], letter_font, (255, 255, 255))
        draw.text(
            ((box.left + box.right) // 2, icon.bottom + 3),
            element.label,
            font=font,
            fill=colours["text"],
            anchor="mt",
        )


def _draw_title(draw, layout, title: str, colours) -> None:
    bar = Box(0, layout.status_height, layout.width, layout.content_top)
    draw.rectangle((bar.left, bar.top, bar.right - 1, bar.bottom - 1), fill=colours["surface"])
    draw.text(
        (round(12 * layout.scale), bar.center[1]),
        title,
        font=load_font(font_size(17, layout.scale)),
        fill=colours["text"],
        anchor="lm",
    )


def _draw_settings(draw, layout, view, colours) -> None:
    s, on = layout.scale, dict(view.toggles)
    font, small = load_font(font_size(13, s)), load_font(font_size(10, s))
    for element in settings_elements(layout, view.scroll):
        box, value = element.box, on.get(element.label, False)
        draw.line((box.left, box.bottom, box.right, box.bottom), fill=colours["line"])
        draw.text(
            (box.left + round(6 * s), box.center[1]),
            element.label,
            font=font,
            fill=colours["text"],
            anchor="lm",
        )
        pill_w, pill_h = round(36 * s), round(20 * s)
        pill = Box(
            box.right - round(6 * s) - pill_w,
            box.center[1] - pill_h // 2,
            box.right - round(6 * s),
            box.center[1] + pill_h - pill_h // 2,
        )
        draw.rounded_rectangle(
            (pill.left, pill.top, pill.right, pill.bottom),
            radius=pill_h // 2,
            fill=colours["accent"] if value else colours["line"],
        )
        knob_x = pill.right - pill_h // 2 if value else pill.left + pill_h // 2
        r = pill_h // 2 - 2
        draw.ellipse(
            (knob_x - r, pill.center[1] - r, knob_x + r, pill.center[1] + r), fill=(255, 255, 255)
        )
        draw.text(
            (pill.left - round(6 * s), box.center[1]),
            "On" if value else "Off",
            font=small,
            fill=colours["subtext"],
            anchor="rm",
        )


def _draw_search(draw, layout, view, colours) -> None:
    s = layout.scale
    box, button = (e.box for e in search_elements(layout))
    font = load_font(font_size(12, s))
    draw.rounded_rectangle(
        (box.left, box.top, box.right, box.bottom),
        radius=round(8 * s),
        fill=colours["surface"],
        outline=colours["accent"] if view.focused else colours["line"],
        width=2 if view.focused else 1,
    )
    shown = view.text + ("|" if view.focused else "")
    text_x = box.left + round(8 * s)
    if view.text or view.focused:
        while shown and font.getlength(shown) > box.right - box.left - round(14 * s):
            shown = shown[1:]  # keep the end in sight, as a real field scrolls
        draw.text((text_x, box.center[1]), shown, font=font, fill=colours["text"], anchor="lm")
    else:
        draw.text(
            (text_x, box.center[1]),
            SEARCH_APPS[view.app],
            font=font,
            fill=colours["subtext"],
            anchor="lm",
        )
    draw.rounded_rectangle(
        (button.left, button.top, button.right, button.bottom),
        radius=round(8 * s),
        fill=colours["accent"],
    )
    _centred_text(draw, button, "Search", font, (255, 255, 255))
    if view.results_for is not None:
        _draw_results(draw, layout, view.results_for, max(box.bottom, button.bottom), colours)
    if view.focused:
        _draw_keyboard(draw, layout, colours)


def _draw_results(draw, layout, query: str, top: int, colours) -> None:
    s = layout.scale
    y = top + round(14 * s)
    font = load_font(font_size(12, s))
    header = f"Results for “{query}”"
    while font.getlength(header) > layout.width - round(24 * s):
        header = header[:-2] + "…"  # cut long queries short rather than draw off screen
    draw.text((round(12 * s), y), header, font=font, fill=colours["text"])
    rng = random.Random(query)  # the same query always shows the same results
    for i in range(3):
        y += round(30 * s)
        words = " ".join(
            rng.choice(("guide", "news", "review", "map", "video", "forum")) for _ in range(2)
        )
        draw.text(
            (round(12 * s), y),
            f"{query[:18]}: {words}",
            font=load_font(font_size(11, s)),
            fill=colours["accent"],
        )
        draw.text(
            (round(12 * s), y + round(13 * s)),
            f"www.example{i}.com",
            font=load_font(font_size(9, s)),
            fill=colours["subtext"],
        )


def _draw_keyboard(draw, layout, colours) -> None:
    top = round(layout.height * 0.66)
    draw.rectangle((0, top, layout.width, layout.height), fill=colours["surface"])
    font = load_font(font_size(11, layout.scale))
    row_height = (layout.height - top) // (len(_KEY_ROWS) + 1)
    key_width = layout.width / 10
    for r, keys in enumerate(_KEY_ROWS):
        offset = (layout.width - len(keys) * key_width) / 2
        for k, key in enumerate(keys):
            cell = Box(
                round(offset + k * key_width) + 1,
                top + r * row_height + 3,
                round(offset + (k + 1) * key_width) - 1,
                top + (r + 1) * row_height - 1,
            )
            draw.rounded_rectangle(
                (cell.left, cell.top, cell.right, cell.bottom), radius=3, fill=colours["background"]
            )
            _centred_text(draw, cell, key, font, colours["text"])


def _draw_photos(draw, layout, view, colours) -> None:
    s = layout.scale
    font = load_font(font_size(12, s))
    top = layout.content_top + round(10 * s)
    if view.photos == 0:
        draw.text(
            (layout.width // 2, top + round(60 * s)),
            "No photos",
            font=font,
            fill=colours["subtext"],
            anchor="mm",
        )
        return
    draw.text((round(12 * s), top), f"Photo 1 of {view.photos}", font=font, fill=colours["subtext"])
    frame = Box(
        round(12 * s),
        top + round(24 * s),
        layout.width - round(12 * s),
        top + round(24 * s) + round(layout.width * 0.8),
    )
    draw.rectangle((frame.left, frame.top, frame.right, frame.bottom), fill=(135, 190, 235))
    hill = [
        (frame.left, frame.bottom),
        (frame.left + (frame.right - frame.left) // 3, frame.center[1]),
        (frame.right, frame.bottom),
    ]
    draw.polygon(hill, fill=(76, 140, 80))
    (button,) = photos_elements(layout, view.photos)
    box = button.box
    draw.rounded_rectangle(
        (box.left, box.top, box.right, box.bottom), radius=round(8 * s), fill=(211, 47, 47)
    )
    _centred_text(draw, box, "Delete", font, (255, 255, 255))


def _draw_plain_app(draw, layout, view, colours) -> None:
    s = layout.scale
    font = load_font(font_size(12, s))
    y = layout.content_top + round(14 * s)
    lines = _APP_LINES.get(view.app, ())
    if view.app == "Maps":
        for i in range(1, 6):  # a street grid
            x, y_line = (
                layout.width * i // 6,
                layout.content_top + (layout.height - layout.content_top) * i // 6,
            )
            draw.line((x, layout.content_top, x, layout.height), fill=colours["line"], width=3)
            draw.line((0, y_line, layout.width, y_line), fill=colours["line"], width=3)
        state = {None: "not set", True: "allowed", False: "denied"}[view.location]
        lines = (f"Location: {state}",)
    for line in lines:
        draw.text((round(12 * s), y), line, font=font, fill=colours["text"])
        y += round(26 * s)


def _draw_dialog(draw, layout, dialog: Dialog, colours) -> None:
    s = layout.scale
    panel, lines = dialog_panel(layout, dialog)
    draw.rounded_rectangle(
        (panel.left, panel.top, panel.right, panel.bottom),
        radius=round(12 * s),
        fill=colours["background"],
    )
    title_font, y = load_font(font_size(14, s)), panel.top + round(20 * s)
    for line in lines:
        draw.text(
            (panel.left + round(12 * s), y),
            line,
            font=title_font,
            fill=colours["text"],
            anchor="lm",
        )
        y += font_size(18, s)
    for element in dialog_elements(layout, dialog):
        box = element.box
        draw.rounded_rectangle(
            (box.left, box.top, box.right - 1, box.bottom - 1),
            radius=round(8 * s),
            fill=colours["surface"],
        )
        _centred_text(draw, box, element.label, load_font(font_size(13, s)), colours["accent"])
