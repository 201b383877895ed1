"""Regenerates autoglm_jax/assets/tiny_tokenizer/ deterministically.

    .venv/bin/python tools/make_tiny_tokenizer.py [--out DIR] [--check]

A GLM-4-shaped byte-level BPE with exactly 512 ids:
  0..255    the 256 byte tokens, id == byte value (GPT-2 byte-to-unicode alphabet)
  256..490  235 merges learned here from the small built-in corpus below (English plus CJK,
            emoji, accented, Cyrillic, Arabic text, so multi-byte merges exist)
  491..511  the GLM special tokens plus our audio and think tokens, in SPECIAL_TOKENS order.
The merges come from a plain-Python BPE trainer with a fixed tie-break (highest count, then
the smallest pair), so the output does not depend on the tokenizers version's trainer.
Pre-tokenization follows GLM-4's tokenizer.json: a Split with a cl100k-style regex, then
ByteLevel without regex; the decoder is ByteLevel.
`--check` regenerates into a temporary folder and fails if anything differs from the shipped files.
"""

from __future__ import annotations

import argparse
import collections
import filecmp
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

from autoglm_jax.processing import chat_template as ct  # noqa: E402
from autoglm_jax.processing.tokenizer import BYTE_TO_UNICODE  # noqa: E402

VOCAB_SIZE = 512
OUT_DIR = REPO / "autoglm_jax" / "assets" / "tiny_tokenizer"

SPECIAL_TOKENS = (
    ct.ENDOFTEXT_TOKEN,
    ct.MASK_TOKEN,
    ct.GMASK_TOKEN,
    ct.SMASK_TOKEN,
    ct.SOP_TOKEN,
    ct.EOP_TOKEN,
    ct.SYSTEM_TOKEN,
    ct.USER_TOKEN,
    ct.ASSISTANT_TOKEN,
    ct.OBSERVATION_TOKEN,
    ct.BEGIN_OF_IMAGE_TOKEN,
    ct.END_OF_IMAGE_TOKEN,
    ct.BEGIN_OF_VIDEO_TOKEN,
    ct.END_OF_VIDEO_TOKEN,
    ct.IMAGE_TOKEN,
    ct.VIDEO_TOKEN,
    ct.BEGIN_OF_AUDIO_TOKEN,
    ct.END_OF_AUDIO_TOKEN,
    ct.AUDIO_TOKEN,
    ct.THINK_TOKEN,
    ct.END_THINK_TOKEN,
)
STOP_TOKENS = (ct.ENDOFTEXT_TOKEN, ct.USER_TOKEN, ct.OBSERVATION_TOKEN)

# GLM-4 / cl100k-style pre-tokenization regex (digits in groups of up to three).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = """\
The phone agent reads the screen, thinks about the task, and then takes one action at a time.
<think>The user wants to open the settings app. I can see the settings icon on the home screen.
I should tap it.</think><answer>do(action="Tap", element=[512, 840])</answer>
<think>The search box is focused, so I type the query and press enter.</think>
<answer>do(action="Type", text="weather in Beijing")</answer>
<answer>do(action="Swipe", start=[500, 1500], end=[500, 400])</answer>
<answer>do(action="Back")</answer> <answer>do(action="Home")</answer>
<answer>do(action="Launch", app="WeChat")</answer>
<answer>finish(message="The alarm is set for seven in the morning.")</answer>
Take a screenshot of the current page and describe what you see on the screen.
A quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.
This is a small tokenizer for tests and smoke runs; it is not a real language model vocabulary.
It has two hundred and fifty six byte tokens, a few hundred merges and the special tokens.
Numbers like 2024, 3.14159, 100%, and 0x7f00 appear in the text as well as code: def f(x): return x + 1
for i in range(10): print(i, i * i)  # squares
{"role": "user", "content": "hello"} {"role": "assistant", "content": "Hello! How can I help?"}
The weather today is sunny with a light breeze, and the temperature is about twenty degrees.
Please open the calendar, create an event for tomorrow at three, and invite the whole team.
你好，世界！今天天气很好。我们一起去公园散步吧。
请打开设置，然后点击无线网络，连接到家里的网络。
手机助手可以帮助你完成各种任务，比如发送消息、设置闹钟和搜索信息。
用户想要打开微信并给妈妈发消息：我马上到家。
こんにちは、世界。今日はいい天気ですね。東京の天気を教えてください。
안녕하세요, 세계! 오늘 날씨가 좋네요. 설정을 열어 주세요.
Привет, мир! Сегодня хорошая погода. Откройте настройки, пожалуйста.
مرحبا بالعالم! الطقس جميل اليوم.
Café, naïve, résumé, façade, jalapeño, Größe, Ærø, São Paulo, Kraków, İstanbul.
Emoji: 😀 😃 😄 😁 😆 😅 😂 🤣 👍 👍🏽 ❤️ 🎉 🚀 🌧️ ☀️ 📱 👨‍👩‍👧 🇨🇳 🇺🇸
The user sent 😀😀😀 and then 👍👍 and 🎉🎉🎉 to celebrate the launch 🚀.
手机 手机 手机 设置 设置 网络 网络 消息 消息 天气 天气 😀 😀 👍 👍
"""


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def train_merges(corpus: str, num_new_tokens: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Plain BPE: merge the most frequent adjacent pair until `num_new_tokens` tokens exist."""
    byte_map = BYTE_TO_UNICODE
    vocab = {byte_map[b]: b for b in range(256)}
    words: collections.Counter[tuple[str, ...]] = collections.Counter()
    pt = pre_tokenizer()
    for line in corpus.splitlines(keepends=True):
        for piece, _ in pt.pre_tokenize_str(line):
            words[tuple(piece)] += 1
    merges: list[tuple[str, str]] = []
    target = 256 + num_new_tokens
    while len(vocab) < target:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            raise RuntimeError("corpus too small for the requested number of merges")
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        new_words: collections.Counter[tuple[str, ...]] = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return vocab, merges


def build_tokenizer() -> Tokenizer:
    num_merged = VOCAB_SIZE - 256 - len(SPECIAL_TOKENS)
    vocab, merges = train_merges(CORPUS, num_merged)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizer()
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tk.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tk.token_to_id(t) == VOCAB_SIZE - len(SPECIAL_TOKENS) + i, t
    byte_map = BYTE_TO_UNICODE
    assert set(byte_map.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert all(tk.token_to_id(byte_map[b]) == b for b in range(256))
    return tk


def write(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tk = build_tokenizer()
    tk.save(str(out_dir / "tokenizer.json"), pretty=True)
    ids = {t: tk.token_to_id(t) for t in SPECIAL_TOKENS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "remove_space": False,
        "padding_side": "left",
        "model_max_length": 8192,
        "eos_token": ct.ENDOFTEXT_TOKEN,
        "pad_token": ct.ENDOFTEXT_TOKEN,
        "added_tokens_decoder": {
            str(ids[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
        "chat_template": ct.GLM_CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    generation = {
        "eos_token_id": [ids[t] for t in STOP_TOKENS],
        "pad_token_id": ids[ct.ENDOFTEXT_TOKEN],
    }
    (out_dir / "generation_config.json").write_text(
        json.dumps(generation, indent=2) + "\n", encoding="utf-8"
    )


FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)
    if not args.check:
        write(args.out)
        print(f"wrote {', '.join(FILES)} to {args.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        stale = [f for f in FILES if not filecmp.cmp(Path(tmp) / f, args.out / f, shallow=False)]
    if stale:
        print(f"out of date in {args.out}: {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"{args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
