"""Host-side processing: tokenizer and chat template, incremental detokenizer, image and audio
preprocessing, prompt assembly (placeholders, M-RoPE position ids)."""

from autoglm_jax.processing.audio import (
    AudioError,
    load_audio,
    log_mel_spectrogram,
    log_mel_windows,
    mel_filter_bank,
    read_wav,
    resample,
)
from autoglm_jax.processing.detokenizer import IncrementalDetokenizer
from autoglm_jax.processing.image import (
    ImageError,
    ImageProcessorConfig,
    image_processor_config_from_hf,
    load_image,
    process_images,
    smart_resize,
)
from autoglm_jax.processing.prompt import (
    expand_image_placeholders,
    get_rope_index,
    make_mm_token_type_ids,
    splice_embeddings,
)
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, GlmSpecialIds, Tokenizer

__all__ = [
    "AudioError",
    "GlmSpecialIds",
    "ImageError",
    "ImageProcessorConfig",
    "IncrementalDetokenizer",
    "TINY_TOKENIZER_DIR",
    "Tokenizer",
    "expand_image_placeholders",
    "get_rope_index",
    "image_processor_config_from_hf",
    "load_audio",
    "load_image",
    "log_mel_spectrogram",
    "log_mel_windows",
    "make_mm_token_type_ids",
    "mel_filter_bank",
    "process_images",
    "read_wav",
    "resample",
    "smart_resize",
    "splice_embeddings",
]
