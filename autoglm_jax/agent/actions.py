"""The action language of the public AutoGLM-Phone agent (zai-org Open-AutoGLM).

A model's reply ends in one call:

    do(action="Launch", app="Settings")
    do(action="Tap", element=[500, 120])          # x, y relative to the screen, 0..999
    do(action="Long Press", element=[500, 120])
    do(action="Type", text="weather")
    do(action="Swipe", start=[500, 800], end=[500, 200])
    do(action="Back")
    do(action="Home")
    do(action="Wait", duration="1 seconds")
    finish(message="Wi-Fi is on")

Each call is one frozen dataclass below; `str(action)` writes it back in the same grammar and
`parse_action` reads it (with `ast`, never eval), so `parse_action(str(a)) == a`; `split_reply`
separates a reply's thinking from its action as the Open-AutoGLM client does. Coordinates stay
relative (0..999); `to_pixels` maps them onto a screen.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import re
import tokenize
from collections.abc import Callable

COORD_MAX = 999  # relative coordinates run 0..COORD_MAX on both axes


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a double-quoted literal Python also reads


def to_pixels(point: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """A relative (x, y) in 0..999 as pixel coordinates on a width x height screen."""
    x, y = point
    return (
        min(width - 1, x * width // (COORD_MAX + 1)),
        min(height - 1, y * height // (COORD_MAX + 1)),
    )


def to_relative(pixel: tuple[float, float], width: int, height: int) -> tuple[int, int]:
    """Pixel coordinates as the relative (x, y) in 0..999 whose pixel cell holds them."""
    x, y = pixel
    return (
        min(COORD_MAX, max(0, int(x * (COORD_MAX + 1) / width))),
        min(COORD_MAX, max(0, int(y * (COORD_MAX + 1) / height))),
    )


@dataclasses.dataclass(frozen=True)
class Launch:
    app: str

    def __str__(self) -> str:
        return f'do(action="Launch", app={_q(self.app)})'


@dataclasses.dataclass(frozen=True)
class Tap:
    element: tuple[int, int]  # relative x, y in 0..999

    def __str__(self) -> str:
        return f'do(action="Tap", element=[{self.element[0]}, {self.element[1]}])'


@dataclasses.dataclass(frozen=True)
class LongPress:
    element: tuple[int, int]

    def __str__(self) -> str:
        return f'do(action="Long Press", element=[{self.element[0]}, {self.element[1]}])'


@dataclasses.dataclass(frozen=True)
class Type:
    text: str

    def __str__(self) -> str:
        return f'do(action="Type", text={_q(self.text)})'


@dataclasses.dataclass(frozen=True)
class Swipe:
    start: tuple[int, int]
    end: tuple[int, int]

    def __str__(self) -> str:
        return (
            f'do(action="Swipe", start=[{self.start[0]}, {self.start[1]}], '
            f"end=[{self.end[0]}, {self.end[1]}])"
        )


@dataclasses.dataclass(frozen=True)
class Back:
    def __str__(self) -> str:
        return 'do(action="Back")'


@dataclasses.dataclass(frozen=True)
class Home:
    def __str__(self) -> str:
        return 'do(action="Home")'


@dataclasses.dataclass(frozen=True)
class Wait:
    seconds: float = 1.0

    def __str__(self) -> str:
        text = f"{self.seconds:g}"
        if float(text) != self.seconds:  # :g keeps 6 digits; repr is exact
            text = repr(self.seconds)
        return f'do(action="Wait", duration="{text} seconds")'


@dataclasses.dataclass(frozen=True)
class Finish:
    message: str

    def __str__(self) -> str:
        return f"finish(message={_q(self.message)})"


Action = Launch | Tap | LongPress | Type | Swipe | Back | Home | Wait | Finish


# --- parsing -------------------------------------------------------------------------------
# The reply is model output, so it is read with `ast` and checked node by node: only a call to
# `do` / `finish` with literal keyword arguments is accepted; nothing is ever evaluated.

MAX_ACTION_CHARS = 20_000  # longer "actions" are garbage; refusing them bounds parse time
_DURATION = re.compile(
    r"\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*(?:s|sec|secs|second|seconds)?\s*", re.IGNORECASE
)


class ActionError(ValueError):
    """A reply that is not one well-formed action; the message says what is wrong."""


def _literal(node: ast.expr, name: str) -> object:
    """The value of a literal argument: str, int, or a list/tuple of those."""
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (str, int, float))
        and not isinstance(node.value, bool)
    ):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, (int, float))
        and not isinstance(node.operand.value, bool)
    ):
        return -node.operand.value  # kept so that [-5, 3] is refused as out of range
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, name) for e in node.elts]
    raise ActionError(
        f"argument {name!r} must be a literal (string, integer or [x, y]), "
        f"got {type(node).__name__} `{ast.unparse(node)[:80]}`"
    )


def _text(args: dict[str, object], name: str) -> str:
    value = args[name]
    if not isinstance(value, str):
        raise ActionError(f"argument {name!r} must be a string, got {value!r:.80}")
    return value


def _point(args: dict[str, object], name: str) -> tuple[int, int]:
    value = args[name]
    if not (isinstance(value, list) and len(value) == 2):
        raise ActionError(
            f"argument {name!r} must be a list [x, y] of two integers, got {value!r:.80}"
        )
    for v in value:
        if not isinstance(v, int):
            raise ActionError(f"argument {name!r}: coordinates must be integers, got {v!r}")
        if not 0 <= v <= COORD_MAX:
            raise ActionError(f"argument {name!r}: coordinate {v} is outside 0..{COORD_MAX}")
    return (value[0], value[1])


def _seconds(args: dict[str, object]) -> float:
    value = args["duration"]
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m.group(1))
    else:
        raise ActionError(f"argument 'duration' must be like \"2 seconds\", got {value!r:.80}")
    if not 0 <= seconds < float("inf"):
        raise ActionError(
            f"argument 'duration' must be a finite, non-negative time, got {value!r:.80}"
        )
    return seconds


# action name -> (required arguments, optional arguments, builder)
_Builder = Callable[[dict[str, object]], "Action"]
_DO: dict[str, tuple[tuple[str, ...], tuple[str, ...], _Builder]] = {
    "Launch": (("app",), (), lambda a: Launch(_text(a, "app"))),
    "Tap": (("element",), (), lambda a: Tap(_point(a, "element"))),
    "Long Press": (("element",), (), lambda a: LongPress(_point(a, "element"))),
    "Type": (("text",), (), lambda a: Type(_text(a, "text"))),
    "Swipe": (("start", "end"), (), lambda a: Swipe(_point(a, "start"), _point(a, "end"))),
    "Back": ((), (), lambda a: Back()),
    "Home": ((), (), lambda a: Home()),
    "Wait": ((), ("duration",), lambda a: Wait(_seconds(a)) if "duration" in a else Wait()),
}


def _expression(text: str) -> ast.expr:
    try:
        return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError, UnicodeError) as first:
        # Models often write a raw line break inside text="..."; the reference client escapes
        # them before parsing, so a reply it accepts is accepted here too.
        if "\n" in text or "\r" in text or "\t" in text:
            escaped = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
            try:
                return ast.parse(escaped, mode="eval").body
            except (SyntaxError, ValueError, RecursionError, MemoryError, UnicodeError):
                pass
        end = _first_call_end(text)  # a clearer reason when the call is fine but text follows
        if end is not None and text[end:].strip():
            raise ActionError(
                f"trailing text after the call: `{text[end:].strip()[:80]}`"
            ) from None
        reason = first.msg if isinstance(first, SyntaxError) else type(first).__name__
        raise ActionError(f"not a valid call: {reason}") from None


def _first_call_end(text: str) -> int | None:
    """Where the first complete bracketed expression of `text` ends, if it parses alone."""
    lines = io.StringIO(text).readlines()  # the rows tokenize counts (split at \n only)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                if depth == 0:
                    end = starts[tok.end[0] - 1] + tok.end[1]
                    ast.parse(text[:end], mode="eval")
                    return end
    except (
        SyntaxError,
        tokenize.TokenError,
        ValueError,
        RecursionError,
        MemoryError,
        UnicodeError,
        IndexError,
    ):
        return None
    return None


def parse_action(text: str) -> Action:
    """The action written by one `do(...)` or `finish(...)` call (surrounding whitespace
    allowed); raises ActionError naming the problem. Never evaluates the text."""
    text = text.strip()
    if not text:
        raise ActionError("empty action")
    if len(text) > MAX_ACTION_CHARS:
        raise ActionError(f"action is {len(text)} characters long (limit {MAX_ACTION_CHARS})")
    call = _expression(text)
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
        raise ActionError(f"expected a call do(...) or finish(...), got `{text[:80]}`")
    func = call.func.id
    if func not in ("do", "finish"):
        raise ActionError(f"unknown function {func!r}: expected do(...) or finish(...)")
    if call.args:
        raise ActionError(f"{func}() takes keyword arguments only, got {len(call.args)} positional")
    args: dict[str, object] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ActionError(f"{func}() does not accept **kwargs")
        if kw.arg in args:
            raise ActionError(f"argument {kw.arg!r} is given twice")
        args[kw.arg] = _literal(kw.value, kw.arg)

    if func == "finish":
        required, optional, build = ("message",), (), lambda a: Finish(_text(a, "message"))
        what = "finish()"
    else:
        if "action" not in args:
            raise ActionError("do() is missing its 'action' argument")
        name = args.pop("action")
        if not isinstance(name, str):
            raise ActionError(f"argument 'action' must be a string, got {name!r:.80}")
        if name not in _DO:
            raise ActionError(f"unknown action {name!r}; known actions: {', '.join(_DO)}")
        required, optional, build = _DO[name]
        what = f"action {name!r}"
    missing = [r for r in required if r not in args]
    if missing:
        raise ActionError(f"{what} is missing argument {', '.join(map(repr, missing))}")
    extra = [a for a in args if a not in required and a not in optional]
    if extra:
        raise ActionError(f"{what} does not take argument {', '.join(map(repr, extra))}")
    return build(args)


def split_reply(content: str) -> tuple[str, str]:
    """(thinking, action text) of a model reply, split as the Open-AutoGLM client does: inside
    <answer>...</answer> when present, else from the first `finish(message=` / `do(action=`;
    <think> tags are removed from the thinking. With neither, the whole reply is the action."""
    if "<answer>" in content:
        before, after = content.split("<answer>", 1)
        action = after.split("</answer>", 1)[0]
        return _untag(before), action.strip()
    starts = [i for i in (content.find("finish(message="), content.find("do(action=")) if i >= 0]
    if not starts:
        return "", content.strip()
    cut = min(starts)
    action = content[cut:].strip()
    if action.endswith("</answer>"):
        action = action[: -len("</answer>")].rstrip()
    return _untag(content[:cut]), action


def _untag(thinking: str) -> str:
    return thinking.replace("<think>", "").replace("</think>", "").strip()
