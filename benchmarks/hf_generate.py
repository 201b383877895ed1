"""Baseline for `python -m infer bench`: transformers' generate on exported weights (CPU).

Reads {"dir", "prompts", "output_len", "batch"} as JSON on stdin; prints one JSON line with
tokens/s. Kept outside the autoglm_jax package, which never imports torch.
"""

import json
import sys
import time

import torch
import transformers


def main() -> None:
    spec = json.loads(sys.stdin.read())
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["dir"]).eval()
    prompts, n, batch = spec["prompts"], spec["output_len"], spec["batch"]
    tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            ids = torch.tensor(prompts[i : i + batch])  # equal lengths: no padding needed
            out = model.generate(
                ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
            tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "requests": len(prompts),
                "output_tokens": tokens,
                "wall_s": wall,
                "tokens_per_s": tokens / wall,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
