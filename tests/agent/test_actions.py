"""The action language: every action by hand, malformed replies refused with their reason,
`parse_action(str(a)) == a` for arbitrary text, and arbitrary input only ever parsing to an
action or raising ActionError (nothing is evaluated)."""

from __future__ import annotations

import builtins
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoglm_jax.agent.actions import (
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

GOOD = [
    ('do(action="Launch", app="Settings")', Launch("Settings")),
    ('do(action="Tap", element=[500, 120])', Tap((500, 120))),
    ('do(action="Tap", element=[0, 999])', Tap((0, 999))),
    ('do(action="Long Press", element=[3, 4])', LongPress((3, 4))),
    ('do(action="Type", text="weather in 北京")', Type("weather in 北京")),
    ('do(action="Type", text="")', Type("")),
    ('do(action="Swipe", start=[500, 800], end=[500, 200])', Swipe((500, 800), (500, 200))),
    ('do(action="Back")', Back()),
    ('do(action="Home")', Home()),
    ('do(action="Wait", duration="2 seconds")', Wait(2.0)),
    ('do(action="Wait", duration="0.5 second")', Wait(0.5)),
    ('do(action="Wait", duration=3)', Wait(3.0)),
    ('do(action="Wait")', Wait()),
    ('finish(message="Wi-Fi is on")', Finish("Wi-Fi is on")),
    # what models write: spacing, single quotes, tuples, keyword order, surrounding whitespace
    ("  do( action = 'Tap' , element = (1, 2) )\n", Tap((1, 2))),
    ('do(element=[7, 8], action="Tap")', Tap((7, 8))),
    ('do(action="Swipe",\n   start=[1, 2],\n   end=[3, 4])', Swipe((1, 2), (3, 4))),
    # a raw line break inside the text, as the reference client tolerates
    ('do(action="Type", text="line one\nline two")', Type("line one\nline two")),
    ('finish(message="a "\n"b")', Finish("a b")),
]


@pytest.mark.parametrize("text,action", GOOD, ids=[t for t, _ in GOOD])
def test_parses_each_action(text, action):
    assert parse_action(text) == action


BAD = [
    ("", "empty action"),
    ("   \n", "empty action"),
    ("hello there", "not a valid call"),
    ("42", "expected a call do(...) or finish(...), got `42`"),
    ('do(action="Fly")', "unknown action 'Fly'"),
    ('do(action="tap", element=[1, 2])', "unknown action 'tap'"),
    ("do(element=[1, 2])", "missing its 'action'"),
    ("do(action=3)", "'action' must be a string"),
    ('do(action="Tap")', "missing argument 'element'"),
    ('do(action="Swipe", start=[1, 2])', "missing argument 'end'"),
    ('do(action="Launch")', "missing argument 'app'"),
    ("finish()", "missing argument 'message'"),
    ('do(action="Back", element=[1, 2])', "does not take argument 'element'"),
    ('do(action="Tap", element=[1, 2], message="sure?")', "does not take argument 'message'"),
    ('finish(message="a", extra=1)', "does not take argument 'extra'"),
    ('do(action="Tap", element=[1000, 2])', "coordinate 1000 is outside 0..999"),
    ('do(action="Tap", element=[-1, 2])', "coordinate -1 is outside 0..999"),
    ('do(action="Tap", element=[1.5, 2])', "coordinates must be integers"),
    ('do(action="Tap", element=[True, 2])', "must be a literal"),
    ('do(action="Tap", element=["1", 2])', "coordinates must be integers"),
    ('do(action="Tap", element=[1, 2, 3])', "list [x, y] of two integers"),
    ('do(action="Tap", element=500)', "list [x, y] of two integers"),
    ('do(action="Type", text=5)', "'text' must be a string"),
    ('do(action="Type", text=b"x")', "must be a literal"),
    ('do(action="Type", text=f"{secret}")', "must be a literal"),
    ('do(action="Type", text=open("/etc/passwd").read())', "must be a literal"),
    ('do(action="Launch", app=None)', "must be a literal"),
    ('do(action="Wait", duration="soon")', "'duration' must be like"),
    ('do(action="Wait", duration=-2)', "finite, non-negative"),
    ('do(action="Tap", element=[1, 2], element=[3, 4])', "'element' is given twice"),
    ('do("Tap", [1, 2])', "keyword arguments only"),
    ("do(**{'action': 'Back'})", "does not accept **kwargs"),
    ('__import__("os").system("true")', "expected a call do(...) or finish(...)"),
    ('exec("x")', "unknown function 'exec'"),
    ('os.do(action="Back")', "expected a call"),
    ('do(action="Back"); import os', "trailing text after the call: `; import os`"),
    ('do(action="Back")\ndo(action="Home")', "trailing text after the call"),
    ('do(action="Back") because it helps', "trailing text after the call"),
    ('do(action="Back"', "not a valid call"),
    ('do(action="Type", text="unterminated)', "not a valid call"),
    ("x = 1", "not a valid call"),
    ('do(action="Type", text="' + "a" * 20_000 + '")', "characters long (limit"),
]


@pytest.mark.parametrize("text,reason", BAD, ids=[t[:40] for t, _ in BAD])
def test_refuses_malformed_with_reason(text, reason):
    with pytest.raises(ActionError) as info:
        parse_action(text)
    assert reason in str(info.value)


def test_action_error_is_a_value_error():
    assert issubclass(ActionError, ValueError)


SPLITS = [
    (
        '<think>Open settings first.</think><answer>do(action="Launch", app="Settings")</answer>',
        ("Open settings first.", 'do(action="Launch", app="Settings")'),
    ),
    ('<think>done</think>\n<answer>finish(message="ok")', ("done", 'finish(message="ok")')),
    ('I should go back. do(action="Back")', ("I should go back.", 'do(action="Back")')),
    ('<think>x</think>do(action="Home")</answer>', ("x", 'do(action="Home")')),
    # the earliest marker wins: the finish below is part of the typed text
    (
        'type it do(action="Type", text="finish(message=")',
        ("type it", 'do(action="Type", text="finish(message=")'),
    ),
    ('all done finish(message="do(action=")', ("all done", 'finish(message="do(action=")')),
    ("no action at all", ("", "no action at all")),
    ("", ("", "")),
]


@pytest.mark.parametrize("content,expected", SPLITS, ids=[c[:30] for c, _ in SPLITS])
def test_split_reply(content, expected):
    assert split_reply(content) == expected


# -- properties -----------------------------------------------------------------------------

awkward = st.text(alphabet=st.sampled_from("\"'\\\n\r\t\x00\x7f{}()[]=,; aé北\u2028"))
texts = st.one_of(st.text(), awkward)
points = st.tuples(st.integers(0, 999), st.integers(0, 999))
seconds = st.one_of(
    st.integers(0, 10**9).map(float),
    st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)
actions = st.one_of(
    st.builds(Launch, texts),
    st.builds(Tap, points),
    st.builds(LongPress, points),
    st.builds(Type, texts),
    st.builds(Swipe, points, points),
    st.just(Back()),
    st.just(Home()),
    st.builds(Wait, seconds),
    st.builds(Finish, texts),
)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_round_trip(action):
    assert parse_action(str(action)) == action
    # and through a reply as the model writes it
    assert split_reply(f"<think>why</think><answer>{action}</answer>") == ("why", str(action))


fragments = st.sampled_from(
    [
        "do(",
        "finish(",
        "action=",
        "message=",
        "text=",
        "element=",
        "start=",
        "end=",
        "app=",
        '"Tap"',
        '"Type"',
        '"Back"',
        '"Swipe"',
        "[1, 2]",
        "[1000, -1]",
        "(",
        ")",
        "[",
        "]",
        ",",
        "'",
        '"',
        "\\",
        "\n",
        "__import__('os').system('false')",
        "_boom()",
        "lambda: 0",
        ";",
        "**x",
        "*y",
        "f'{_boom()}'",
        "1.5",
        "True",
        "None",
        "#",
        "=",
        " ",
        "if",
        "yield",
    ]
)
inputs = st.one_of(st.text(), st.lists(fragments, max_size=30).map("".join))


def _boom(*_: object) -> None:
    raise AssertionError("model text was executed")


@settings(max_examples=500, deadline=None)
@given(inputs)
def test_arbitrary_text_parses_or_raises_action_error(text):
    # eval/exec/compile raising proves nothing is executed; anything but ActionError fails
    with mock.patch.object(builtins, "eval", _boom), mock.patch.object(builtins, "exec", _boom):
        try:
            action = parse_action(text)
        except ActionError:
            return
    assert parse_action(str(action)) == action
