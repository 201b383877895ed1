"""The simulated phone and its tasks: hand-checked transitions, rendering and element boxes,
and the oracle completing every task of both splits, also after detours."""

from __future__ import annotations

import json
import random
import re

import pytest

from autoglm_jax.agent.actions import (
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
    to_relative,
)
from autoglm_jax.agent.episodes import write_episodes
from autoglm_jax.agent.phone import DIALOGS, PhoneSetup, SimPhone
from autoglm_jax.agent.screens import APPS, SEARCH_APPS, TOGGLES, photos_elements
from autoglm_jax.agent.tasks import (
    SPLITS,
    AnswerDialog,
    Search,
    SetToggle,
    make_task,
    oracle_episode,
    step_is_correct,
    target_box,
)
from autoglm_jax.agent.wordings import QUERIES, QUERY_WORDS, TEMPLATES

SIZES = [(252, 448), (180, 320), (360, 780)]


def tap(phone, pixel):
    """A Tap at a pixel, written in the relative coordinates a model would use."""
    return phone.apply(Tap(to_relative(pixel, phone.width, phone.height)))


def tap_element(phone, label):
    return tap(phone, phone.element(label).box.center)


def test_tap_inside_an_icon_opens_its_app_and_outside_does_nothing():
    phone = SimPhone(PhoneSetup(seed=3))
    clock = phone.element("Clock").box
    assert tap(phone, (clock.left + 1, clock.bottom - 2)) == "opened Clock"
    assert phone.current_app == "Clock"
    phone.apply(Home())
    assert phone.apply(Tap((2, 2))) == "nothing to tap at (2, 2)"  # the status bar
    assert phone.current_app == "Home"


def test_launch_opens_by_name_and_refuses_unknown_apps():
    phone = SimPhone()
    assert phone.apply(Launch(" notes ")) == "opened Notes"
    assert phone.apply(Launch("Snapchat")) == 'no app named "Snapchat"'
    assert phone.current_app == "Notes"


def test_toggles_flip_on_tap_and_only_there():
    phone = SimPhone(PhoneSetup(seed=1, app="Settings", toggles=(("Wi-Fi", False),)))
    before = phone.screenshot()
    if phone.element("Wi-Fi") is None:
        phone.apply(Swipe((500, 900), (500, 300)))
    assert tap_element(phone, "Wi-Fi") == "Wi-Fi: on"
    assert phone.toggles["Wi-Fi"] and phone.screenshot() != before
    assert tap_element(phone, "Wi-Fi") == "Wi-Fi: off"
    assert not phone.toggles["Wi-Fi"]


def test_dark_mode_toggle_switches_the_theme():
    light = SimPhone(PhoneSetup(seed=2, toggles=(("Dark mode", False),)))
    dark = SimPhone(PhoneSetup(seed=2, toggles=(("Dark mode", True),)))
    assert light.screenshot().getpixel((1, 200)) != dark.screenshot().getpixel((1, 200))
    assert sum(dark.screenshot().getpixel((1, 200))) < sum(light.screenshot().getpixel((1, 200)))


def test_type_fills_only_a_focused_box_and_search_submits_it():
    phone = SimPhone(PhoneSetup(seed=4, app="Browser"))
    assert phone.apply(Type("cats")) == "no text box is focused; typing ignored"
    assert phone.view.text == ""
    assert tap_element(phone, "Search") == "nothing to search for: the search box is empty"
    assert tap_element(phone, "search box") == "focused the search box"
    assert phone.apply(Type("cats")) == 'typed "cats"'
    assert phone.apply(Type("dogs")) == 'typed "dogs"'  # typing replaces, as on the real agent
    assert tap_element(phone, "Search") == 'searched Browser for "dogs"'
    assert phone.searches == [("Browser", "dogs")] and phone.view.results_for == "dogs"
    assert not phone.view.focused


def test_back_unwinds_dialog_keyboard_results_then_app_and_home_goes_home():
    phone = SimPhone(PhoneSetup(seed=5, app="Music"))
    tap_element(phone, "search box")
    phone.apply(Type("jazz"))
    tap_element(phone, "Search")
    tap_element(phone, "search box")
    assert [phone.apply(Back()) for _ in range(4)] == [
        "closed the keyboard",
        "back to the search page",
        "back to the home screen",
        "already on the home screen",
    ]
    phone = SimPhone(PhoneSetup(seed=5, app="Photos", dialog="delete_photo"))
    assert phone.apply(Back()) == "closed the dialog"
    assert phone.dialog is None and phone.current_app == "Photos" and phone.answers == []
    phone.apply(Launch("Maps"))
    assert phone.dialog == DIALOGS["location"]
    assert phone.apply(Home()) == "went to the home screen"
    assert phone.current_app == "Home" and phone.dialog is None


def test_dialog_buttons_answer_and_take_effect():
    phone = SimPhone(PhoneSetup(seed=6, app="Photos", photos=2))
    assert tap_element(phone, "Delete") == "asked: Delete photo?"
    assert [e.label for e in phone.elements] in (["Cancel", "Delete"], ["Delete", "Cancel"])
    assert tap_element(phone, "Delete") == "Delete photo? Delete"
    assert phone.view.photos == 1 and phone.answers == [("delete_photo", "Delete")]
    phone.apply(Launch("Maps"))
    assert tap_element(phone, "Allow") == "Allow Maps to use your location? Allow"
    assert phone.view.location is True
    phone.apply(Home())
    assert phone.apply(Launch("Maps")) == "opened Maps"  # answered: it asks no more


def test_a_dialog_blocks_taps_on_the_screen_below():
    phone = SimPhone(PhoneSetup(seed=6, app="Photos", dialog="delete_photo"))
    (delete_below,) = photos_elements(phone.layout, phone.view.photos)
    assert tap(phone, delete_below.box.center).startswith("nothing to tap")
    assert phone.dialog is not None and phone.answers == []


def test_swipe_scrolls_the_settings_list_within_bounds():
    phone = SimPhone(PhoneSetup(seed=7, app="Settings"))
    layout = phone.layout
    assert layout.max_scroll > 0  # ten toggles do not fit on the default screen
    first = phone.elements[0].label
    assert phone.apply(Swipe((500, 900), (500, 100))).startswith("scrolled")
    assert phone.view.scroll == layout.max_scroll and phone.elements[0].label != first
    assert phone.apply(Swipe((500, 900), (500, 100))) == "the list is already at its end"
    assert phone.apply(Swipe((500, 500), (500, 502))) == "swipe too short to scroll"
    phone.apply(Swipe((500, 100), (500, 900)))
    assert phone.view.scroll == 0 and phone.elements[0].label == first
    phone.apply(Home())
    assert phone.apply(Swipe((500, 900), (500, 100))) == "nothing to scroll here"


def test_every_well_typed_action_is_answered_and_anything_else_refused():
    phone = SimPhone()
    for action in [
        Tap((999, 999)),
        Tap((0, 0)),
        LongPress((500, 500)),
        Swipe((0, 0), (999, 999)),
        Type(""),
        Wait(0.5),
        Back(),
        Home(),
        Launch(""),
        Finish("done"),
    ]:
        assert isinstance(phone.apply(action), str)
    assert phone.finished == "done"
    for bad in ["Tap", ("Tap", (1, 2)), None]:
        with pytest.raises(ValueError):
            phone.apply(bad)
    with pytest.raises(ValueError):
        SimPhone(PhoneSetup(app="Snapchat"))


def _all_screens(seed, width, height):
    """A phone on each kind of screen this simulator draws (the same phone may come twice,
    changed in between)."""

    def phone(**start):
        return SimPhone(PhoneSetup(seed=seed, width=width, height=height, **start))

    yield phone()
    for app in APPS:
        yield phone(app=app)
    for key in DIALOGS:
        yield phone(app="Photos", dialog=key)
    yield phone(app="Photos", photos=0)
    settings = phone(app="Settings")
    settings.apply(Swipe((500, 999), (500, 0)))
    yield settings
    for app in SEARCH_APPS:
        search = phone(app=app)
        tap_element(search, "search box")
        search.apply(Type("a rather long query that will not fit in the box"))
        yield search
        tap_element(search, "Search")
        yield search


@pytest.mark.parametrize("width,height", SIZES)
def test_boxes_lie_on_screen_and_tappable_ones_do_not_overlap(width, height):
    for seed in range(10):  # both dialog button layouts, both grids
        for phone in _all_screens(seed, width, height):
            boxes = [e.box for e in phone.elements]
            assert all(box.inside(width, height) for box in boxes), phone.view
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
            # the centre of each box, written as a model would, lands back on that element
            for element in phone.elements:
                point = to_relative(element.box.center, width, height)
                assert phone.element_at(*to_pixels(point, width, height)) == element
    assert len(SimPhone(PhoneSetup(width=width, height=height)).elements) == len(APPS)


@pytest.mark.parametrize("width,height", SIZES)
def test_screenshots_have_the_screen_size_and_differ_by_seed(width, height):
    shots = [
        SimPhone(
            PhoneSetup(seed=s, width=width, height=height, toggles=(("Dark mode", False),))
        ).screenshot()
        for s in range(4)
    ]
    assert all(shot.size == (width, height) and shot.mode == "RGB" for shot in shots)
    assert len({shot.tobytes() for shot in shots}) == len(shots)
    settings = SimPhone(PhoneSetup(seed=0, width=width, height=height, app="Settings"))
    assert settings.screenshot().tobytes() != shots[0].tobytes()


def test_layouts_vary_with_the_seed():
    layouts = [SimPhone(PhoneSetup(seed=s)).layout for s in range(20)]
    assert len({layout.app_order for layout in layouts}) == 20
    assert {layout.columns for layout in layouts} == {3, 4}
    assert len({layout.toggle_order for layout in layouts}) == 20
    assert len({layout.row_height for layout in layouts}) > 3
    themes = {SimPhone(PhoneSetup(seed=s)).toggles["Dark mode"] for s in range(20)}
    assert themes == {True, False}


@pytest.mark.parametrize("split", SPLITS)
def test_the_oracle_completes_every_task_in_a_few_steps(split):
    for seed in range(300):
        task = make_task(seed, split)
        actions, phone = oracle_episode(task, max_steps=8)
        assert isinstance(actions[-1], Finish), (task, actions)
        assert task.done(phone), (task, phone.log)
        assert not task.done(task.new_phone())  # every task needs at least one action
        assert all(not isinstance(a, Finish) for a in actions[:-1])


def test_phone_after_k_steps_is_the_oracle_episode_cut_there():
    task = make_task(7, "train")
    actions, final = oracle_episode(task)
    assert len(actions) > 1
    for k in range(len(actions) + 2):  # past the Finish: the finished phone
        phone, expected = task.phone_after(k), task.new_phone()
        for action in actions[:k]:
            if not isinstance(action, Finish):
                expected.apply(action)
        assert phone.screenshot().tobytes() == expected.screenshot().tobytes(), k
        assert phone.log == expected.log, k
    finished = task.phone_after(len(actions))
    assert task.done(finished) and finished.log == final.log[:-1]  # all but the Finish


@pytest.mark.parametrize("width,height", SIZES[1:])
def test_the_oracle_works_on_other_screen_sizes(width, height):
    for seed in range(100):
        task = make_task(seed, "train", width=width, height=height)
        _, phone = oracle_episode(task, max_steps=8)
        assert task.done(phone), (task, phone.log)


def _detour_action(rng, phone):
    """A plausible model mistake: a random tap on some element or anywhere, Back, Home, a
    launch, a swipe or typing."""
    kind = rng.randrange(7)
    if kind == 0 and phone.elements:
        element = rng.choice(phone.elements)
        return Tap(to_relative(element.box.center, phone.width, phone.height))
    return [
        Tap((rng.randrange(1000), rng.randrange(1000))),
        Back(),
        Home(),
        Launch(rng.choice(APPS)),
        Swipe((500, rng.randrange(1000)), (500, rng.randrange(1000))),
        Type("oops"),
        Tap((500, 500)),
    ][kind]


def test_the_oracle_recovers_from_detours():
    rng = random.Random(0)
    for seed in range(150):
        task = make_task(seed, "train")
        phone = task.new_phone()
        for _ in range(rng.randrange(1, 6)):
            phone.apply(_detour_action(rng, phone))
            if rng.random() < 0.5:  # some oracle steps between the mistakes
                phone.apply(task.next_action(phone))
        for _ in range(10):
            action = task.next_action(phone)
            phone.apply(action)
            if isinstance(action, Finish):
                break
        # only a dialog answered the other way is a dead end: the oracle finishes saying so
        dead_end = isinstance(task.goal, AnswerDialog) and action.message.startswith("Cannot")
        assert isinstance(action, Finish) and (task.done(phone) or dead_end), (task, phone.log)


def test_held_out_wordings_queries_and_layouts_never_appear_in_train():
    for train, heldout in list(TEMPLATES.values()) + list(QUERIES.values()):
        assert train and heldout and not set(train) & set(heldout)
    tasks = {split: [make_task(seed, split) for seed in range(400)] for split in SPLITS}
    instructions = {s: {t.instruction for t in tasks[s]} for s in SPLITS}
    templates = {s: {t.template for t in tasks[s]} for s in SPLITS}
    assert not instructions["train"] & instructions["heldout"]
    assert not templates["train"] & templates["heldout"]
    assert all(t.template in TEMPLATES_BY_SPLIT["heldout"] for t in tasks["heldout"])
    assert {t.setup.seed % 2 for t in tasks["train"]} == {0}
    assert {t.setup.seed % 2 for t in tasks["heldout"]} == {1}
    assert make_task(7, "heldout") == make_task(7, "heldout") != make_task(7, "train")
    with pytest.raises(ValueError):
        make_task(0, "test")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", re.sub(r"\{\w+\}", "", text).casefold()))


def test_held_out_wordings_are_new_sentences_of_words_train_uses_for_the_same_goal():
    # A model trained from scratch cannot guess that "Refuse" means Deny: held-out tests new
    # phrasings of known words, so every held-out word occurs in that kind's train wordings.
    for kind, (train, heldout) in TEMPLATES.items():
        known = set().union(*map(words, train))
        for wording in heldout:
            assert words(wording) <= known, (kind, wording, words(wording) - known)


def test_generated_train_queries_are_many_and_share_no_word_with_held_out_queries():
    heldout_words = set().union(*(words(q) for _, heldout in QUERIES.values() for q in heldout))
    assert not heldout_words & {w.casefold() for w in QUERY_WORDS}
    queries = [
        t.goal.query for t in (make_task(s) for s in range(3000)) if isinstance(t.goal, Search)
    ]
    listed = {q for train, _ in QUERIES.values() for q in train}
    generated = [q for q in queries if q not in listed]
    assert 0.3 < len(generated) / len(queries) < 0.7
    assert len(set(generated)) > 0.8 * len(generated) > 200  # mostly one-offs: copied, not recalled


TEMPLATES_BY_SPLIT = {
    split: {w for pair in TEMPLATES.values() for w in pair[i]} for i, split in enumerate(SPLITS)
}


def test_step_judging_accepts_the_target_element_and_rejects_the_rest():
    task = next(
        t
        for t in (make_task(s) for s in range(100))
        if isinstance(t.goal, SetToggle) and t.setup.app == "Home"
    )
    phone = task.new_phone()
    # Opening an app: Launch by name, or a tap anywhere on its home-screen icon.
    assert task.next_action(phone) == Launch("Settings") and target_box(task, phone) is None
    icon = phone.element("Settings").box
    assert step_is_correct(task, phone, Launch(" settings "))
    assert not step_is_correct(task, phone, Launch("Photos"))
    corner = to_relative((icon.right - 1, icon.bottom - 1), phone.width, phone.height)
    assert step_is_correct(task, phone, Tap(corner))
    outside = to_relative((icon.left - 3, icon.top - 3), phone.width, phone.height)
    assert not step_is_correct(task, phone, Tap(outside))
    assert not step_is_correct(task, phone, Back())
    # A tap target: the toggle's row, once Settings shows it.
    phone.apply(Launch("Settings"))
    while isinstance(action := task.next_action(phone), Swipe):
        assert not step_is_correct(task, phone, Tap(corner))
        phone.apply(action)
    box = target_box(task, phone)
    assert phone.element_at(*box.center).label == task.goal.name
    corner = to_relative((box.right - 1, box.bottom - 1), phone.width, phone.height)
    assert step_is_correct(task, phone, Tap(corner))
    assert not step_is_correct(task, phone, Launch("Settings"))
    above = to_relative((box.center[0], box.top - 3), phone.width, phone.height)
    assert not step_is_correct(task, phone, Tap(above))
    actions, phone = oracle_episode(task)
    assert target_box(task, phone) is None
    assert step_is_correct(task, phone, Finish("anything"))
    for seed in range(60):  # every oracle step is judged correct, every Wait wrong
        task, phone = make_task(seed), make_task(seed).new_phone()
        while not isinstance(action := task.next_action(phone), Finish):
            assert step_is_correct(task, phone, action) and not step_is_correct(task, phone, Wait())
            phone.apply(action)


def test_the_home_screen_shows_every_app():
    assert {e.label for e in SimPhone().elements} == set(APPS)
    assert set(SEARCH_APPS) <= set(APPS) and "Dark mode" in TOGGLES


def test_the_oracle_scrolls_back_up_to_a_row_above_the_list():
    phone = SimPhone(PhoneSetup(seed=7, app="Settings"))
    phone.apply(Swipe((500, 999), (500, 0)))
    top_name = phone.layout.toggle_order[0]
    goal = SetToggle(top_name, not phone.toggles[top_name])
    swipe = goal.next_action(phone)
    assert isinstance(swipe, Swipe) and swipe.end[1] > swipe.start[1]  # the finger moves down
    phone.apply(swipe)
    assert phone.element(top_name) is not None
    phone.apply(goal.next_action(phone))
    assert goal.done(phone) and isinstance(goal.next_action(phone), Finish)


def test_letter_queries_are_made_up_words_none_held_out():
    heldout_words = set().union(*(words(q) for _, heldout in QUERIES.values() for q in heldout))
    tasks = [make_task(s, letter_queries=0.5) for s in range(3000)]
    queries = [t.goal.query for t in tasks if isinstance(t.goal, Search)]
    listed = {q for train, _ in QUERIES.values() for q in train}
    made_up = [q for q in queries if q not in listed and not set(q.split()) & set(QUERY_WORDS)]
    assert 0.35 < len(made_up) / len(queries) < 0.65
    assert all(q.replace(" ", "").isalpha() and 1 <= len(q.split()) <= 2 for q in made_up)
    assert not heldout_words & set().union(*(words(q) for q in made_up))
    # held-out tasks and the default draw are untouched by the option
    assert make_task(7, "heldout", letter_queries=1.0) == make_task(7, "heldout")
    assert [make_task(s, letter_queries=0.0) for s in range(50)] == [
        make_task(s) for s in range(50)
    ]
    with pytest.raises(ValueError, match="letter_queries"):
        write_episodes("unused", 1, letter_queries=1.5)


def test_goals_write_only_those_tasks_in_seed_order(tmp_path):
    path = write_episodes(tmp_path, 4, seed=10, width=112, height=196, goals=("Search",))
    seeds = sorted({json.loads(line)["task"]["seed"] for line in open(path, encoding="utf-8")})
    wanted = [
        s for s in range(10, 200) if isinstance(make_task(s, width=112, height=196).goal, Search)
    ]
    assert seeds == wanted[:4]
    with pytest.raises(ValueError, match=r"unknown goals \['Serch'\]"):
        write_episodes(tmp_path, 1, goals=("Serch",))
