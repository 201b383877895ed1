"""Chat-template rendering that matches transformers' `apply_chat_template(tokenize=False)`.

A checkpoint's own template (``chat_template.jinja`` or ``tokenizer_config.json``) is the truth.
We render it the way transformers 5.x does (``transformers/utils/chat_template_utils.py``):
an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a ``{% generation %}`` block tag, a ``tojson`` filter that does not
escape HTML, and the globals ``raise_exception``, ``strftime_now``, ``dict`` and ``namespace``.
Inputs are first rebuilt out of plain JSON types (rich objects such as decoded images become
``"<TypeName>"`` placeholders), keys whose value is None are dropped from each message, and the
reasoning fields are aliased, all as transformers does, so the same template sees the same data.

`GLM_CHAT_TEMPLATE` is the built-in template used when a checkpoint ships none.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

# GLM-4 special token names (the strings in tokenizer.json). The audio ones are our extension:
# no public GLM checkpoint has them; the tiny tokenizer and extended checkpoints add them.
ENDOFTEXT_TOKEN = "<|endoftext|>"
MASK_TOKEN = "[MASK]"
GMASK_TOKEN = "[gMASK]"
SMASK_TOKEN = "[sMASK]"
SOP_TOKEN = "<sop>"
EOP_TOKEN = "<eop>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
OBSERVATION_TOKEN = "<|observation|>"
BEGIN_OF_IMAGE_TOKEN = "<|begin_of_image|>"
END_OF_IMAGE_TOKEN = "<|end_of_image|>"
BEGIN_OF_VIDEO_TOKEN = "<|begin_of_video|>"
END_OF_VIDEO_TOKEN = "<|end_of_video|>"
IMAGE_TOKEN = "<|image|>"
VIDEO_TOKEN = "<|video|>"
BEGIN_OF_AUDIO_TOKEN = "<|begin_of_audio|>"
END_OF_AUDIO_TOKEN = "<|end_of_audio|>"
AUDIO_TOKEN = "<|audio|>"
THINK_TOKEN = "<think>"
END_THINK_TOKEN = "</think>"

# The built-in template. It follows the official GLM-4.1V-9B-Thinking chat template
# (zai-org/GLM-4.1V-9B-Thinking, tokenizer revision 3c1471e51dc811b589d4d12b1c1c7c1c941267c2,
# the architecture of AutoGLM-Phone-9B) turn by turn:
#   [gMASK]<sop> <|system|>\n{text} <|user|>\n{parts} <|assistant|>{metadata}\n{text}
#   generation prompt: <|assistant|>\n
# with image parts as <|begin_of_image|><|image|><|end_of_image|> and video parts as
# <|begin_of_video|><|video|><|end_of_video|>. For the common cases (text, "image" parts) it
# renders byte-identically to the official one. Additions, each marked below:
#   * thinking off: with enable_thinking=False the generation prompt is followed by
#     "<think></think>\n", the form GLM-4.5V's official template uses (GLM-4.1V-Thinking itself
#     has no switch). We do not add GLM-4.5V's "/nothink" suffix to user turns: GLM-4.1V was
#     not trained with it.
#   * OpenAI-style parts: {"type": "image_url"} is an image (the official 4.1V template drops
#     it silently), and list-valued system/assistant content renders its parts too.
#   * audio parts ({"type": "audio"} or {"type": "input_audio"}) render as
#     <|begin_of_audio|><|audio|><|end_of_audio|> (our extension).
#   * tool/observation turns render as <|observation|>\n{content}, as GLM-4 chat does.
GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>\n"
    "{%- macro render_content(content) -%}\n"
    "    {%- if content is string -%}\n"
    "        {{- content -}}\n"
    "    {%- elif content is iterable and content is not mapping -%}\n"
    "        {%- for item in content -%}\n"
    "            {%- if item is string -%}\n"
    "                {{- item -}}\n"
    "            {%- elif item is not mapping -%}\n"
    "            {%- elif item.type == 'text' -%}\n"
    "                {{- item.text -}}\n"
    "            {%- elif item.type in ['video', 'video_url'] or 'video' in item -%}\n"
    f"                {{{{- '{BEGIN_OF_VIDEO_TOKEN}{VIDEO_TOKEN}{END_OF_VIDEO_TOKEN}' -}}}}\n"
    "            {%- elif item.type in ['image', 'image_url'] or 'image' in item"
    " or 'image_url' in item -%}\n"
    f"                {{{{- '{BEGIN_OF_IMAGE_TOKEN}{IMAGE_TOKEN}{END_OF_IMAGE_TOKEN}' -}}}}\n"
    "            {%- elif item.type in ['audio', 'input_audio', 'audio_url'] or 'audio' in item"
    " or 'input_audio' in item -%}\n"
    f"                {{{{- '{BEGIN_OF_AUDIO_TOKEN}{AUDIO_TOKEN}{END_OF_AUDIO_TOKEN}' -}}}}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- elif content is defined and content is not none -%}\n"
    "        {{- content -}}\n"
    "    {%- endif -%}\n"
    "{%- endmacro -%}\n"
    "{%- for m in messages -%}\n"
    "    {%- if m.role == 'system' -%}\n"
    f"        {{{{- '{SYSTEM_TOKEN}\\n' -}}}}{{{{- render_content(m.content) -}}}}\n"
    "    {%- elif m.role == 'user' -%}\n"
    f"        {{{{- '{USER_TOKEN}\\n' -}}}}{{{{- render_content(m.content) -}}}}\n"
    "    {%- elif m.role == 'assistant' -%}\n"
    f"        {{{{- '{ASSISTANT_TOKEN}' -}}}}{{{{- m.metadata if m.metadata else '' -}}}}"
    "{{- '\\n' -}}{{- render_content(m.content) -}}\n"
    "    {%- elif m.role in ['tool', 'observation'] -%}\n"
    f"        {{{{- '{OBSERVATION_TOKEN}\\n' -}}}}{{{{- render_content(m.content) -}}}}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    f"    {{{{- '{ASSISTANT_TOKEN}\\n' -}}}}\n"
    "    {%- if enable_thinking is defined and not enable_thinking -%}\n"
    f"        {{{{- '{THINK_TOKEN}{END_THINK_TOKEN}\\n' -}}}}\n"
    "    {%- endif -%}\n"
    "{%- endif -%}\n"
)

# Names a message's reasoning may be given under; the first is what chat templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _GenerationTag(jinja2.ext.Extension):
    """Parses ``{% generation %}...{% endgeneration %}`` and renders the body unchanged.

    transformers uses this tag to build assistant-token masks; templates that contain it must
    still parse here. We do not compute masks, so the body is passed through.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_passthrough"), [], [], body).set_lineno(
            lineno
        )

    def _passthrough(self, caller):
        return caller()


class _TemplateDict:
    # `dict(...)` inside templates, without exposing the dict type itself.
    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    # Namespaces refuse underscore-prefixed names, so templates cannot reach CPython internals.
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"got {name!r}."
            )


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format):
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compiles a chat template with transformers' environment; cached by source text."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


def plain_template_data(value: Any) -> Any:
    """Rebuilds `value` out of plain JSON types, as transformers does before rendering.

    Subclasses of str/int/float are reduced to the base type, mappings, lists and tuples are
    copied recursively, numpy scalars become Python scalars, dataclasses and pydantic models
    become dicts, and anything else (images, arrays, tensors) becomes ``"<TypeName>"``.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_template_data(k): plain_template_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_template_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_template_data(v) for v in value)
    if isinstance(value, np.generic):
        return plain_template_data(value.item())  # np.bool_(False) must stay falsy
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain_template_data(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
    if callable(getattr(value, "model_dump", None)):
        return plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning_fields(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        reasoning = next(
            (message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None
        )
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Renders one conversation; what `apply_chat_template(..., tokenize=False)` returns.

    `special_tokens` (``bos_token``, ``eos_token``, ...) are visible to the template and are
    overridden by `kwargs` of the same name. A kwarg set to None is passed as None (the template
    sees it as defined); leave it out to keep it undefined.
    """
    if not messages:
        raise ValueError("Cannot apply a chat template to an empty conversation.")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(f"Chat messages must be mappings, got {message!r}.")
        # APIs such as OpenAI send content=None or tool_calls=None; templates handle a missing
        # key better than a None, so transformers drops them. So do we.
        chat.append({k: v for k, v in message.items() if v is not None})
    chat = _alias_reasoning_fields(plain_template_data(chat))
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise TypeError(
                    f"Tools must be JSON-schema dicts, got {type(tool).__name__}; "
                    "convert functions with transformers.utils.get_json_schema first."
                )
    if documents is not None:
        for document in documents:
            if not isinstance(document, Mapping):
                raise TypeError("Documents must be a list of dicts with 'title' and 'text' keys.")
    template_kwargs = {**(special_tokens or {}), **kwargs}
    return compile_chat_template(source).render(
        messages=chat,
        tools=plain_template_data(None if tools is None else list(tools)),
        documents=plain_template_data(None if documents is None else list(documents)),
        add_generation_prompt=add_generation_prompt,
        **plain_template_data(template_kwargs),
    )
