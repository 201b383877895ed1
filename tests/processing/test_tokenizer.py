"""Tokenizer and chat-template tests: parity with transformers on local folders, no network."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import jinja2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from autoglm_jax.processing import chat_template as ct
from autoglm_jax.processing.tokenizer import (
    BYTE_TO_UNICODE,
    TINY_TOKENIZER_DIR,
    Tokenizer,
)

REPO = Path(__file__).resolve().parents[2]

# Real-style GLM templates, written for these tests. GLM41V_STYLE has the shape of the official
# GLM-4.1V-9B-Thinking template (indented block tags, '\n' expressions, parts); GLM45V_STYLE
# that of GLM-4.5V's (macro, namespace, reasoning, tool calls, the enable_thinking switch).
GLM41V_STYLE = """[gMASK]<sop>
{%- for msg in messages %}
    {%- if msg.role == 'system' %}
<|system|>
{{ msg.content }}
    {%- elif msg.role == 'user' %}
<|user|>{{ '\\n' }}

        {%- if msg.content is string %}
{{ msg.content }}
        {%- else %}
            {%- for part in msg.content %}
                {%- if part.type == 'video' or 'video' in part %}
<|begin_of_video|><|video|><|end_of_video|>
                {%- elif part.type == 'image' or 'image' in part %}
<|begin_of_image|><|image|><|end_of_image|>
                {%- elif part.type == 'text' %}
{{ part.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
    {%- elif msg.role == 'assistant' %}
<|assistant|>{{ msg.metadata or '' }}
{{ msg.content }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""

GLM45V_STYLE = """[gMASK]<sop>
{%- if tools -%}
<|system|>
# Tools
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
{%- endif -%}
{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content }}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content -%}
            {%- if part is mapping and part.type == 'text' -%}
                {{- part.text }}
            {%- elif part is mapping and (part.type in ['image', 'image_url'] or 'image' in part) -%}
                <|begin_of_image|><|image|><|end_of_image|>
            {%- elif part is mapping and (part.type in ['audio', 'input_audio']) -%}
                <|begin_of_audio|><|audio|><|end_of_audio|>
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}
    {%- if m.role == 'user' %}
        {% set ns.last_user = loop.index0 -%}
    {%- endif %}
{%- endfor %}
{% for m in messages %}
{%- if m.role == 'user' -%}<|user|>
{{ text_of(m.content) }}
{{- '/nothink' if (enable_thinking is defined and not enable_thinking) else '' -}}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{%- set content = text_of(m.content) %}
{%- if loop.index0 > ns.last_user and m.reasoning_content is string -%}
{{ '\\n<think>' + m.reasoning_content.strip() + '</think>' }}
{%- else -%}
{{ '\\n<think></think>' }}
{%- endif -%}
{%- if content.strip() -%}
{{ '\\n' + content.strip() }}
{%- endif -%}
{% if m.tool_calls %}
{% for tc in m.tool_calls %}
{{ '\\n<tool_call>' + tc.function.name }}
{% for k, v in tc.function.arguments.items() %}
<arg_key>{{ k }}</arg_key>
<arg_value>{{ v | tojson(ensure_ascii=False) if v is not string else v }}</arg_value>
{% endfor %}
</tool_call>{% endfor %}
{% endif %}
{%- elif m.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
    {{- '<|observation|>' }}
{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- m.content }}{{- '\\n</tool_response>' }}
{%- elif m.role == 'system' -%}
<|system|>
{{ text_of(m.content) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{{'<think></think>\\n' if (enable_thinking is defined and not enable_thinking) else ''}}
{%- endif -%}"""

# Exercises the rest of transformers' environment: special-token variables, dict, namespace,
# loop controls, {% generation %}, strftime_now, and whitespace trimming around block tags.
ENVIRONMENT_PROBE = """{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ image_token }}
{% set d = dict(a=1, b='x') %}{{ d | tojson }}
{% for m in messages %}
    {% if loop.index0 > 1 %}{% break %}{% endif %}
    {% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]{% endgeneration %}{% else %}({{ m.content if m.content is string else m.content | length }}){% endif %}
{% endfor %}
{{ strftime_now('%%') }}{{ '<' ~ '/' ~ 'x' ~ '>' }} {{ "a<b>&c" | tojson }}
{{ messages[0].keys() | list | tojson }}{{ tools | tojson }}{{ documents | tojson }}
{{ custom_var | default('none') }}
{{ messages | tojson }}"""

SYSTEM_USER = [
    {"role": "system", "content": "You are a phone agent."},
    {"role": "user", "content": "Open settings, 请打开设置 😀"},
]
MULTI_TURN = [
    {"role": "user", "content": "What time is it?"},
    {
        "role": "assistant",
        "content": "<think>check clock</think><answer>Ten.</answer>",
        "reasoning_content": "  look at the status bar  ",
    },
    {"role": "user", "content": "And the date?"},
    {"role": "assistant", "content": "  Monday  ", "reasoning": "calendar", "metadata": None},
]
IMAGE_PARTS = [
    {
        "role": "user",
        "content": [
            {"type": "image", "image": "screen.png"},
            {"type": "text", "text": "Tap the blue button."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    },
]
RICH_PARTS = [  # objects inside parts reach templates as "<TypeName>" placeholders
    {"role": "system", "content": [{"type": "text", "text": "sys as parts"}]},
    {
        "role": "user",
        "content": [
            {"type": "image", "image": np.zeros((2, 2, 3), np.uint8)},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "audio", "audio": np.float32(0.5)},
            {"type": "text", "text": "what do you hear?"},
        ],
    },
]
TOOLS_CONV = [
    {"role": "user", "content": "Weather in 北京?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"function": {"name": "weather", "arguments": {"city": "北京", "days": 2}}},
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": "sunny"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Weather <forecast> & more",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CONVERSATIONS = {
    "system_user": SYSTEM_USER,
    "multi_turn": MULTI_TURN,
    "image_parts": IMAGE_PARTS,
    "rich_parts": RICH_PARTS,
    "tools": TOOLS_CONV,
}

MIXED_TEXTS = [
    "",
    "hello world",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "你好，世界！今天天气很好。",
    "こんにちは 안녕하세요 Привет مرحبا",
    "emoji 😀👍🏽❤️ 👨‍👩‍👧 🇨🇳 flags",
    "e\u0301 combining n\u0303 marks \u0301 alone",
    "[gMASK]<sop><|system|>\nsys<|user|>\nhi"
    "<|begin_of_image|><|image|><|end_of_image|><|assistant|>\n",
    '<think>reason</think><answer>do(action="Tap", element=[1, 2])</answer><|endoftext|>',
    "<|user|><|user|>x<|observation|><|audio|>[MASK][sMASK]<eop>",
    "numbers 1234567 3.14159 0x7f",
    "partial special <|user| and <|unknown|>",
]


def write_tokenizer_dir(
    path: Path,
    *,
    template: str | list | None = None,
    jinja: str | None = None,
    config_extra: dict | None = None,
) -> Path:
    """A tokenizer folder using the tiny vocabulary, with the given templates."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_TOKENIZER_DIR / "tokenizer.json", path / "tokenizer.json")
    config = json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text("utf-8"))
    config.pop("chat_template")
    if template is not None:
        config["chat_template"] = template
    config.update(config_extra or {})
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    return path


def load_both(path: Path):
    return Tokenizer.from_dir(path), AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def hf_render(hf, messages, *, add_generation_prompt=True, enable_thinking=None, **kwargs):
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


@pytest.fixture(scope="module")
def tiny():
    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def hf_tiny():
    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def template_dirs(tmp_path_factory):
    """name -> (ours, transformers') for each test template."""
    root = tmp_path_factory.mktemp("templates")
    out = {}
    for name, template in [("glm41v", GLM41V_STYLE), ("glm45v", GLM45V_STYLE)]:
        out[name] = load_both(write_tokenizer_dir(root / name, template=template))
    out["builtin"] = load_both(TINY_TOKENIZER_DIR)
    return out


# --- the tiny tokenizer ------------------------------------------------------------------


def test_tiny_tokenizer_layout(tiny, hf_tiny):
    assert tiny.vocab_size == len(tiny) == len(hf_tiny) == 512
    specials = tiny.special_ids.as_dict()
    assert len(specials) == 21
    assert sorted(specials.values()) == list(range(491, 512))  # all at the end of the vocab
    assert specials["endoftext"] == 491 and specials["end_think"] == 511
    assert tiny.special_ids.image == tiny.token_to_id("<|image|>") == 505
    assert tiny.special_ids.begin_of_audio == tiny.token_to_id("<|begin_of_audio|>")
    assert tiny.special_token_id_set == frozenset(range(491, 512))
    for b in range(256):  # id == byte value for the byte tokens
        assert tiny.token_to_id(BYTE_TO_UNICODE[b]) == b
        assert tiny.token_bytes(b) == bytes([b])
    merged = [tiny.id_to_token(i) for i in range(256, 491)]
    assert len(set(merged)) == 235
    multibyte = [t for t in merged if any(ord(c) >= 0xC0 for c in t)]
    assert len(multibyte) > 40  # CJK, emoji, Cyrillic, ... merges exist
    assert tiny.eos_token_id == tiny.pad_token_id == 491
    assert tiny.stop_token_ids == (491, 498, 500)  # <|endoftext|>, <|user|>, <|observation|>
    assert tiny.has_own_chat_template and tiny.chat_template == ct.GLM_CHAT_TEMPLATE
    assert tiny.decoder_is_byte_level


def test_tiny_tokenizer_assets_are_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_tiny_tokenizer", REPO / "tools" / "make_tiny_tokenizer.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--check", "--out", str(TINY_TOKENIZER_DIR)]) == 0
    stale = write_tokenizer_dir(tmp_path)  # chat_template removed from the config
    shutil.copy(TINY_TOKENIZER_DIR / "generation_config.json", stale)
    assert script.main(["--check", "--out", str(stale)]) == 1


# --- encode / decode parity --------------------------------------------------------------


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_encode_decode_match_transformers(tiny, hf_tiny, text):
    ids = tiny.encode(text)
    assert ids == hf_tiny.encode(text, add_special_tokens=False)
    assert tiny.encode(text, add_special_tokens=True) == hf_tiny.encode(text)
    for skip in (False, True):
        assert tiny.decode(ids, skip_special_tokens=skip) == hf_tiny.decode(
            ids, skip_special_tokens=skip
        )
    assert tiny.decode(ids) == text  # byte-level BPE without normalizer round-trips
    assert [tiny.id_to_token(i) for i in ids] == hf_tiny.convert_ids_to_tokens(ids)


def test_special_tokens_encode_as_single_ids(tiny):
    ids = tiny.encode("<|user|>\nhi<|assistant|>")
    assert ids[0] == tiny.special_ids.user and ids[-1] == tiny.special_ids.assistant
    assert tiny.decode(ids, skip_special_tokens=True) == "\nhi"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60))
def test_encode_decode_match_transformers_random_text(tiny, hf_tiny, text):
    ids = tiny.encode(text)
    assert ids == hf_tiny.encode(text, add_special_tokens=False)
    assert tiny.decode(ids) == hf_tiny.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 520), max_size=40), st.booleans())
def test_decode_random_ids_matches_transformers(tiny, hf_tiny, ids, skip):
    # Ids past the vocabulary (>= 512) are dropped by both.
    assert tiny.decode(ids, skip_special_tokens=skip) == hf_tiny.decode(
        ids, skip_special_tokens=skip
    )


def test_decode_drops_unknown_ids(tiny):
    assert tiny.decode([104, 10_000, 105]) == "hi"
    assert tiny.id_to_token(10_000) is None and tiny.token_bytes(10_000) == b""


# --- chat templates: parity with transformers ---------------------------------------------


@pytest.mark.parametrize("template", ["builtin", "glm41v", "glm45v"])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("enable_thinking", [None, True, False])
def test_chat_template_matches_transformers(
    template_dirs, template, conversation, add_generation_prompt, enable_thinking
):
    ours, hf = template_dirs[template]
    messages = CONVERSATIONS[conversation]
    tools = TOOLS if conversation == "tools" else None
    got = ours.apply_chat_template(
        messages,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        tools=tools,
    )
    want = hf_render(
        hf,
        messages,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        tools=tools,
    )
    assert got == want
    assert got.startswith("[gMASK]<sop>")
    ids = ours.apply_chat_template(
        messages,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        tools=tools,
        tokenize=True,
    )
    assert ids == ours.encode(want) == hf.encode(want, add_special_tokens=False)


def test_chat_template_thinking_switch_changes_output(template_dirs):
    # Guards the parity test above against a template that ignores enable_thinking.
    for name in ("builtin", "glm45v"):
        ours, _ = template_dirs[name]
        on = ours.apply_chat_template(SYSTEM_USER, enable_thinking=True)
        off = ours.apply_chat_template(SYSTEM_USER, enable_thinking=False)
        assert on != off and "<think></think>" in off and "<think></think>" not in on


def test_environment_matches_transformers(tmp_path):
    ours, hf = load_both(
        write_tokenizer_dir(
            tmp_path,
            template=ENVIRONMENT_PROBE,
            config_extra={
                "bos_token": {"__type": "AddedToken", "content": "[gMASK]", "special": True},
                "image_token": "<|image|>",
            },
        )
    )
    docs = [{"title": "t", "text": "doc"}]
    for conversation in CONVERSATIONS.values():
        for kwargs in ({}, {"custom_var": "set", "documents": docs}, {"tools": TOOLS}):
            got = ours.apply_chat_template(conversation, **kwargs)
            assert got == hf_render(hf, conversation, **kwargs)
    got = ours.apply_chat_template(MULTI_TURN)
    assert got.startswith("[gMASK]|<|endoftext|>|<|endoftext|>|<|image|>\n")
    assert '"a<b>&c"' in got  # tojson does not HTML-escape
    # A kwarg overrides the special-token variable of the same name, in both.
    assert ours.apply_chat_template(SYSTEM_USER, eos_token="E") == hf_render(
        hf, SYSTEM_USER, eos_token="E"
    )


def test_chat_template_jinja_file_wins(tmp_path):
    jinja = "JINJA{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    path = write_tokenizer_dir(tmp_path, template=GLM41V_STYLE, jinja=jinja)
    ours, hf = load_both(path)
    got = ours.apply_chat_template(SYSTEM_USER)
    assert got == hf_render(hf, SYSTEM_USER)
    assert got.startswith("JINJA<system>")
    assert ours.chat_template == jinja


def test_jinja_file_without_config(tmp_path):
    path = tmp_path / "tok"
    path.mkdir()
    shutil.copy(TINY_TOKENIZER_DIR / "tokenizer.json", path / "tokenizer.json")
    (path / "chat_template.jinja").write_text(GLM45V_STYLE, encoding="utf-8")
    ours, hf = load_both(path)
    assert ours.special_tokens_map == {}
    for conversation in (SYSTEM_USER, MULTI_TURN, IMAGE_PARTS):
        assert ours.apply_chat_template(conversation, enable_thinking=False) == hf_render(
            hf, conversation, enable_thinking=False
        )


def test_special_tokens_map_file_is_read_like_transformers(tmp_path):
    path = write_tokenizer_dir(tmp_path, template=ENVIRONMENT_PROBE)
    config = json.loads((path / "tokenizer_config.json").read_text("utf-8"))
    del config["added_tokens_decoder"]  # the legacy layout, where the map file counts
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    special_map = {"bos_token": {"content": "<sop>", "special": True}, "eos_token": "<|user|>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
    ours, hf = load_both(path)
    assert ours.apply_chat_template(SYSTEM_USER) == hf_render(hf, SYSTEM_USER)
    assert ours.special_tokens_map["bos_token"] == "<sop>"
    assert ours.eos_token_id == ours.special_ids.user == hf.eos_token_id
    assert ours.source_dir == path


def test_named_templates_match_transformers(tmp_path):
    templates = [
        {"name": "default", "template": "D{% for m in messages %}{{ m.content }}{% endfor %}"},
        {"name": "tool_use", "template": "T{{ tools | length }}{{ messages | length }}"},
    ]
    ours, hf = load_both(write_tokenizer_dir(tmp_path, template=templates))
    assert (
        ours.apply_chat_template(SYSTEM_USER)
        == hf_render(hf, SYSTEM_USER)
        == ("DYou are a phone agent.Open settings, 请打开设置 😀")
    )
    assert ours.apply_chat_template(SYSTEM_USER, tools=TOOLS) == hf_render(
        hf, SYSTEM_USER, tools=TOOLS
    )
    assert ours.apply_chat_template(SYSTEM_USER, tools=TOOLS).startswith("T1")
    assert ours.apply_chat_template(SYSTEM_USER, template_name="tool_use", tools=[]) == "T02"
    with pytest.raises(ValueError, match="no chat template named 'x'"):
        ours.apply_chat_template(SYSTEM_USER, template_name="x")


def test_raise_exception_and_sandbox(tiny):
    with pytest.raises(jinja2.TemplateError, match="no system"):
        tiny.apply_chat_template(SYSTEM_USER, chat_template="{{ raise_exception('no system') }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        tiny.apply_chat_template(
            SYSTEM_USER, chat_template="{{ messages.__class__.__mro__ }}{{ ''.__class__ }}"
        )
    with pytest.raises(jinja2.exceptions.SecurityError):
        tiny.apply_chat_template(
            SYSTEM_USER, chat_template="{% set ns = namespace(_x=1) %}{{ ns._x }}"
        )
    with pytest.raises(ValueError, match="empty conversation"):
        tiny.apply_chat_template([])
    with pytest.raises(TypeError, match="JSON-schema dicts"):
        tiny.apply_chat_template(SYSTEM_USER, tools=[print])


def test_messages_are_not_modified(tiny):
    messages = json.loads(json.dumps(MULTI_TURN))
    before = json.dumps(messages)
    tiny.apply_chat_template(messages)
    assert json.dumps(messages) == before


# --- the built-in GLM template, by hand ----------------------------------------------------


def test_builtin_template_hand_written_cases(tmp_path):
    path = write_tokenizer_dir(tmp_path)  # no chat_template anywhere: the built-in one
    tok = Tokenizer.from_dir(path)
    assert not tok.has_own_chat_template and tok.chat_template == ct.GLM_CHAT_TEMPLATE
    render = tok.apply_chat_template
    assert render(SYSTEM_USER) == (
        "[gMASK]<sop><|system|>\nYou are a phone agent.<|user|>\nOpen settings, 请打开设置 😀"
        "<|assistant|>\n"
    )
    assert render(SYSTEM_USER, enable_thinking=False).endswith("<|assistant|>\n<think></think>\n")
    assert render(SYSTEM_USER, enable_thinking=True).endswith("😀<|assistant|>\n")
    assert render(SYSTEM_USER, add_generation_prompt=False).endswith("😀")
    assert render(MULTI_TURN, add_generation_prompt=False) == (
        "[gMASK]<sop><|user|>\nWhat time is it?"
        "<|assistant|>\n<think>check clock</think><answer>Ten.</answer>"
        "<|user|>\nAnd the date?<|assistant|>\n  Monday  "
    )
    image = "<|begin_of_image|><|image|><|end_of_image|>"
    audio = "<|begin_of_audio|><|audio|><|end_of_audio|>"
    assert render(IMAGE_PARTS) == (
        f"[gMASK]<sop><|user|>\n{image}Tap the blue button.{image}<|assistant|>\n"
    )
    assert render(RICH_PARTS) == (
        f"[gMASK]<sop><|system|>\nsys as parts<|user|>\n{image}{audio}{audio}"
        "what do you hear?<|assistant|>\n"
    )
    assert render(
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
        add_generation_prompt=False,
    ) == ("[gMASK]<sop><|user|>\nq<|observation|>\nr")
    assert (
        render(
            [{"role": "assistant", "content": "x", "metadata": "meta"}], add_generation_prompt=False
        )
        == "[gMASK]<sop><|assistant|>meta\nx"
    )
    ids = render(IMAGE_PARTS, tokenize=True)
    special = tok.special_ids
    assert ids[:3] == [special.gmask, special.sop, special.user]
    assert ids.count(special.image) == 2 and ids[-2:] == [special.assistant, 10]


# --- stop ids ------------------------------------------------------------------------------


def test_stop_ids_union_of_config_and_generation_config(tmp_path):
    path = write_tokenizer_dir(tmp_path)
    (path / "config.json").write_text(json.dumps({"eos_token_id": 498}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [491, 498, 500]}))
    assert Tokenizer.from_dir(path).stop_token_ids == (498, 491, 500)
    (path / "config.json").write_text(
        json.dumps({"eos_token_id": [500, 7], "text_config": {"eos_token_id": [491, 9]}})
    )
    assert Tokenizer.from_dir(path).stop_token_ids == (500, 7, 491, 9, 498)
    (path / "generation_config.json").unlink()
    assert Tokenizer.from_dir(path).stop_token_ids == (500, 7, 491, 9)
    (path / "config.json").unlink()
    assert Tokenizer.from_dir(path).stop_token_ids == (491,)  # falls back to eos_token
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json"):
        Tokenizer.from_dir(path)


# --- errors name the file ------------------------------------------------------------------


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Tokenizer.from_dir(missing)


def test_missing_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    "name", ["tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"]
)
def test_malformed_json_names_the_file(tmp_path, name):
    path = write_tokenizer_dir(tmp_path)
    (path / name).write_text('{"eos_token": "<|endoftext|>",', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path / name}.*malformed JSON"):
        Tokenizer.from_dir(path)


def test_wrong_json_type_names_the_file(tmp_path):
    path = write_tokenizer_dir(tmp_path)
    (path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="tokenizer_config.json.*JSON object"):
        Tokenizer.from_dir(path)


def test_missing_special_tokens_are_none(tmp_path):
    from tokenizers import AddedToken, decoders, models

    backend = __import__("tokenizers").Tokenizer(
        models.BPE({BYTE_TO_UNICODE[b]: b for b in range(256)}, [])
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<|user|>", "<|image|>")])
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.special_ids.user == 256 and tok.special_ids.image == 257
    assert tok.special_ids.audio is None and tok.special_ids.begin_of_image is None
    assert tok.special_ids.as_dict() == {"user": 256, "image": 257}
    assert tok.stop_token_ids == () and tok.eos_token_id is None
