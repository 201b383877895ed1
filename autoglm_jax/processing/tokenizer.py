"""GLM-4 tokenizer: a `tokenizers.Tokenizer` plus the checkpoint's chat template and stop ids.

    tok = Tokenizer.from_dir(checkpoint_dir)        # or Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    prompt = tok.apply_chat_template(messages, enable_thinking=False)
    ids = tok.encode(prompt)                       # the template already wrote [gMASK]<sop>
    tok.stop_token_ids, tok.special_ids.image

Encoding and decoding are the `tokenizers` library's own, so they equal transformers'
`PreTrainedTokenizerFast` on the same folder; chat rendering follows `chat_template.py`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from autoglm_jax.processing import chat_template as ct

# The tokenizer shipped with the package for tests and smoke runs: 512 ids, byte-level BPE,
# GLM special tokens at the end (see tools/make_tiny_tokenizer.py).
TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
PROCESSOR_CHAT_TEMPLATE_FILE = "chat_template.json"
MODEL_CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# What a checkpoint folder holds of its tokenizer: `from_dir` keeps their bytes and
# `write_files` writes them back, so saving a model never depends on that folder still being
# there (a training run whose init checkpoint was moved saved a model with no tokenizer).
TOKENIZER_DIR_FILES = (
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    CHAT_TEMPLATE_FILE,
    PROCESSOR_CHAT_TEMPLATE_FILE,
    GENERATION_CONFIG_FILE,
)

# transformers' named special-token attributes, passed to chat templates as variables.
_NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


@dataclasses.dataclass(frozen=True)
class GlmSpecialIds:
    """Ids of the GLM control tokens in one vocabulary; None where the vocabulary lacks one."""

    endoftext: int | None
    mask: int | None
    gmask: int | None
    smask: int | None
    sop: int | None
    eop: int | None
    system: int | None
    user: int | None
    assistant: int | None
    observation: int | None
    begin_of_image: int | None
    end_of_image: int | None
    begin_of_video: int | None
    end_of_video: int | None
    image: int | None
    video: int | None
    begin_of_audio: int | None
    end_of_audio: int | None
    audio: int | None
    think: int | None
    end_think: int | None

    def as_dict(self) -> dict[str, int]:
        """Field name -> id, for the tokens that are present."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# GlmSpecialIds field -> token string.
GLM_SPECIAL_TOKENS: dict[str, str] = {
    "endoftext": ct.ENDOFTEXT_TOKEN,
    "mask": ct.MASK_TOKEN,
    "gmask": ct.GMASK_TOKEN,
    "smask": ct.SMASK_TOKEN,
    "sop": ct.SOP_TOKEN,
    "eop": ct.EOP_TOKEN,
    "system": ct.SYSTEM_TOKEN,
    "user": ct.USER_TOKEN,
    "assistant": ct.ASSISTANT_TOKEN,
    "observation": ct.OBSERVATION_TOKEN,
    "begin_of_image": ct.BEGIN_OF_IMAGE_TOKEN,
    "end_of_image": ct.END_OF_IMAGE_TOKEN,
    "begin_of_video": ct.BEGIN_OF_VIDEO_TOKEN,
    "end_of_video": ct.END_OF_VIDEO_TOKEN,
    "image": ct.IMAGE_TOKEN,
    "video": ct.VIDEO_TOKEN,
    "begin_of_audio": ct.BEGIN_OF_AUDIO_TOKEN,
    "end_of_audio": ct.END_OF_AUDIO_TOKEN,
    "audio": ct.AUDIO_TOKEN,
    "think": ct.THINK_TOKEN,
    "end_think": ct.END_THINK_TOKEN,
}


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file does not exist."""
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    # tokenizer_config stores special tokens as strings or as serialized AddedTokens.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_tokens_map(config: Mapping[str, Any]) -> dict[str, str]:
    """The variables transformers gives templates: named tokens, then model-specific ones."""
    out: dict[str, str] = {}
    for key in _NAMED_SPECIAL_TOKENS:
        content = _token_content(config.get(key))
        if content is not None:
            out[key] = content
    for key, value in config.items():
        if key in out or key in _NAMED_SPECIAL_TOKENS or not key.endswith("_token"):
            continue
        content = _token_content(value)
        if content is not None:
            out[key] = content
    extra = config.get("extra_special_tokens")
    if isinstance(extra, Mapping):
        for key, value in extra.items():
            content = _token_content(value)
            if content is not None:
                out[key] = content
    return out


def _eos_ids(value: Any, path: Path) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ValueError(f"{path}: eos_token_id must be an int or a list of ints, got {value!r}")
    values = [value] if isinstance(value, int) else value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{path}: eos_token_id must be an int or a list of ints, got {value!r}")
    return list(values)


def _chat_templates(path: Path, config: Mapping[str, Any]) -> str | dict[str, str] | None:
    """chat_template.jinja wins over tokenizer_config.json, which wins over chat_template.json."""
    jinja_file = path / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{jinja_file}: not UTF-8 text ({e})") from e
    template = config.get("chat_template")
    if template is None:
        processor = _read_json_object(path / PROCESSOR_CHAT_TEMPLATE_FILE)
        template = None if processor is None else processor.get("chat_template")
        source = path / PROCESSOR_CHAT_TEMPLATE_FILE
    else:
        source = path / TOKENIZER_CONFIG_FILE
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        try:
            return {t["name"]: t["template"] for t in template}
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: chat_template list entries need name and template") from e
    if isinstance(template, Mapping):
        return dict(template)
    raise ValueError(f"{source}: chat_template must be a string, list or dict")


class Tokenizer:
    """Byte-level BPE tokenizer with GLM chat formatting.

    Attributes:
      stop_token_ids: ids that end generation (config.json and generation_config.json
        `eos_token_id`, union in that order; the tokenizer's eos token when both lack one).
      special_ids: the GLM control-token ids (`GlmSpecialIds`).
      chat_template: the checkpoint's template source, or the built-in GLM template.
      has_own_chat_template: whether the template came from the checkpoint.
      special_tokens_map: template variables such as ``eos_token`` (transformers' names).
      special_token_id_set: ids of the added tokens marked special (what decode may skip).
      source_dir: the folder `from_dir` read, else None.
      files: name -> bytes of the TOKENIZER_DIR_FILES that folder held when it was read
        (what `write_files` writes); empty for a tokenizer built in memory.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        chat_template: str | Mapping[str, str] | None = None,
        special_tokens_map: Mapping[str, str] | None = None,
        stop_token_ids: Iterable[int] = (),
        name_or_path: str = "",
        source_dir: str | Path | None = None,
        files: Mapping[str, bytes] | None = None,
    ):
        self._tk = backend
        self.name_or_path = name_or_path
        # The folder the files came from; saving writes `files`, never reads it again.
        self.source_dir: Path | None = None if source_dir is None else Path(source_dir)
        self.files: dict[str, bytes] = dict(files or {})
        self.has_own_chat_template = chat_template is not None
        self._chat_templates = chat_template
        self.special_tokens_map: dict[str, str] = dict(special_tokens_map or {})
        stops = list(dict.fromkeys(int(i) for i in stop_token_ids))
        if not stops and self.eos_token_id is not None:
            stops = [self.eos_token_id]
        self.stop_token_ids: tuple[int, ...] = tuple(stops)
        self.special_ids = GlmSpecialIds(
            **{field: backend.token_to_id(tok) for field, tok in GLM_SPECIAL_TOKENS.items()}
        )
        added = backend.get_added_tokens_decoder()
        self.special_token_id_set: frozenset[int] = frozenset(
            i for i, t in added.items() if t.special
        )
        # Detokenizing token by token from raw bytes is exact only for a plain ByteLevel decoder.
        self.decoder_is_byte_level: bool = isinstance(
            backend.decoder, tokenizers.decoders.ByteLevel
        )
        self._bytes_cache: dict[int, bytes] = {}

    # --- loading -------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Loads tokenizer.json, tokenizer_config.json, chat_template.jinja and stop ids.

        Raises FileNotFoundError naming the missing folder or tokenizer.json, and ValueError
        naming the file when a JSON file is malformed.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {path}")
        tokenizer_file = path / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} not found (a tokenizers-library file)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # the Rust error does not name the file
            _read_json(tokenizer_file)  # malformed JSON: say so, naming the file
            raise ValueError(f"{tokenizer_file}: cannot load tokenizer ({e})") from e
        config = _read_json_object(path / TOKENIZER_CONFIG_FILE) or {}
        if "added_tokens_decoder" not in config:
            # Older saves keep the special tokens in special_tokens_map.json; transformers reads
            # it only then, and its entries win over tokenizer_config.json's.
            config = {**config, **(_read_json_object(path / SPECIAL_TOKENS_MAP_FILE) or {})}
        model_config_file = path / MODEL_CONFIG_FILE
        model_config = _read_json_object(model_config_file) or {}
        generation_file = path / GENERATION_CONFIG_FILE
        generation = _read_json_object(generation_file) or {}
        stops = _eos_ids(model_config.get("eos_token_id"), model_config_file)
        text_config = model_config.get("text_config")
        if isinstance(text_config, Mapping):  # glm4v nests the decoder's settings
            stops += _eos_ids(text_config.get("eos_token_id"), model_config_file)
        stops += _eos_ids(generation.get("eos_token_id"), generation_file)
        return cls(
            backend,
            chat_template=_chat_templates(path, config),
            special_tokens_map=_special_tokens_map(config),
            stop_token_ids=stops,
            name_or_path=str(path),
            source_dir=path,
            files={n: (path / n).read_bytes() for n in TOKENIZER_DIR_FILES if (path / n).is_file()},
        )

    def write_files(self, directory: str | Path) -> None:
        """Write the tokenizer files `from_dir` read into `directory` (a checkpoint being
        saved), from memory."""
        for name, data in self.files.items():
            (Path(directory) / name).write_bytes(data)

    # --- vocabulary ----------------------------------------------------------------------

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tk

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included (HF's `len(tokenizer)`).

        A model's embedding table may have more rows (GLM-4 pads 151552).
        """
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(int(token_id))

    def _named_id(self, key: str) -> int | None:
        token = self.special_tokens_map.get(key)
        return None if token is None else self._tk.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._named_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._named_id("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._named_id("bos_token")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one id contributes to `decode` output (byte-level decoders only).

        Ids the vocabulary lacks contribute nothing, as in `decode`.
        """
        cached = self._bytes_cache.get(token_id)
        if cached is not None:
            return cached
        if not self.decoder_is_byte_level:
            raise ValueError(f"{self.name_or_path or 'tokenizer'}: decoder is not ByteLevel")
        token = self._tk.id_to_token(int(token_id))
        if token is None:
            out = b""
        else:
            try:  # the ByteLevel decoder maps each char back to a byte ...
                out = bytes(UNICODE_TO_BYTE[c] for c in token)
            except KeyError:  # ... and falls back to the token's UTF-8 when one has no byte
                out = token.encode("utf-8")
        self._bytes_cache[token_id] = out
        return out

    # --- text <-> ids --------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Special-token strings in `text` become their ids."""
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> list[list[int]]:
        encodings = self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text. Invalid UTF-8 becomes U+FFFD; ids outside the vocabulary are dropped."""
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # --- chat ----------------------------------------------------------------------------

    @property
    def chat_template(self) -> str:
        """The template `apply_chat_template` uses by default."""
        return self.get_chat_template()

    def get_chat_template(self, name: str | None = None, tools: Any = None) -> str:
        """Picks a template as transformers does: by name, "tool_use" with tools, "default"."""
        templates = self._chat_templates
        if templates is None:
            if name is not None:
                raise ValueError(f"no chat template named {name!r}: the checkpoint has none")
            return ct.GLM_CHAT_TEMPLATE
        if isinstance(templates, str):
            if name is not None:
                raise ValueError(f"no chat template named {name!r}: the checkpoint has one")
            return templates
        if name is not None:
            if name not in templates:
                raise ValueError(f"no chat template named {name!r}; have {sorted(templates)}")
            return templates[name]
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(f"several chat templates and no default: {sorted(templates)}")

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tokenize: bool = False,
        *,
        documents: Sequence[Mapping[str, Any]] | None = None,
        chat_template: str | None = None,
        template_name: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """Renders `messages` with the checkpoint's template (or the built-in GLM one).

        Output equals transformers' `apply_chat_template(..., tokenize=False)` with the same
        arguments. `enable_thinking=None` leaves the variable undefined in the template (note:
        transformers passes a None through as defined). Message content may be a string or a
        list of parts (`{"type": "text"}`, `"image"`/`"image_url"`, `"audio"`/`"input_audio"`,
        `"video"`); they reach the template unchanged. Extra `kwargs` become template
        variables. With `tokenize=True` returns the ids of the rendered text (no tokens added).
        """
        source = chat_template or self.get_chat_template(template_name, tools)
        if enable_thinking is not None:
            kwargs["enable_thinking"] = enable_thinking
        text = ct.render_chat_template(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            documents=documents,
            special_tokens=self.special_tokens_map,
            **kwargs,
        )
        return self.encode(text) if tokenize else text

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"stop_token_ids={self.stop_token_ids})"
        )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which tokenizers' ByteLevel uses."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


BYTE_TO_UNICODE: dict[int, str] = dict(sorted(_bytes_to_unicode().items()))
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}
