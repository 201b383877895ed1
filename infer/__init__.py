"""`python -m infer`: the inference CLI (generate, chat, serve, bench, bench-attention)."""
