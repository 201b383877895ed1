"""agent/screen_labels.py: which element lies under each vision token of a simulator screen."""

import numpy as np

from autoglm_jax.agent import make_task
from autoglm_jax.agent.episodes import PHONE_SIZE
from autoglm_jax.agent.screen_labels import SCREEN_CLASSES, labelled_screens, token_labels
from autoglm_jax.agent.screens import APPS, TOGGLES


def test_classes_name_every_app_toggle_and_button_once():
    assert SCREEN_CLASSES[0] == "none" and len(set(SCREEN_CLASSES)) == len(SCREEN_CLASSES)
    assert {*APPS, *TOGGLES, "Search", "Delete", "Cancel", "Allow", "Deny"} <= set(SCREEN_CLASSES)


def test_token_labels_by_hand_on_a_home_screen():
    assert PHONE_SIZE == (112, 196)  # 4 x 7 tokens of 28 x 28 pixels
    phones = (make_task(seed, "train", *PHONE_SIZE).new_phone() for seed in range(100))
    phone = next(p for p in phones if p.current_app == "Home")
    labels = token_labels(phone, merge_size=2)
    assert labels.shape == (28,)
    apps = [e for e in phone.elements if e.kind == "app"]
    assert apps
    for k in range(28):
        x, y = (k % 4) * 28 + 14, (k // 4) * 28 + 14  # token k's centre
        under = [e.label for e in apps if e.box.contains(x, y)]
        assert SCREEN_CLASSES[labels[k]] == (under[0] if under else "none"), k
    # every app the grid's centres reach is labelled somewhere
    reached = {
        e.label
        for e in apps
        for k in range(28)
        if e.box.contains((k % 4) * 28 + 14, (k // 4) * 28 + 14)
    }
    assert reached and reached == {SCREEN_CLASSES[i] for i in labels if i}


def test_labelled_screens_cover_settings_and_buttons():
    images = labelled_screens("train", range(300000, 300060), merge_size=2)
    assert len(images) == 60 and images[0].image.shape == (196, 112, 3)
    seen = {SCREEN_CLASSES[i] for x in images for i in x.labels}
    assert set(TOGGLES) & seen and "Search" in seen and set(APPS) & seen
    share = np.mean([x.labels > 0 for x in images])
    assert 0.1 < share < 0.6
    again = labelled_screens("train", range(300000, 300060), merge_size=2)
    assert all(
        (a.labels == b.labels).all() and (a.image == b.image).all() for a, b in zip(images, again)
    )
