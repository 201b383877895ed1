"""Seconds to compile the random-init program of a glm-4-9b-shaped model, by depth: Flax's
`module.init` under jit against `checkpoint.random_init.grouped_init` (what `ag.init` uses).

    python benchmarks/init_compile.py [--layers 10 40] [--full-width]

Widths are cut to d_model 256 (vocab 4096) unless --full-width: compile time follows the
number of ops, which depth sets, not the widths, and small widths fit any machine. Prints
one JSON line per depth with both times (trace, lower and compile) and the number of
random-generator calls in each program.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import flax.linen as nn
import jax

import autoglm_jax as ag
from autoglm_jax.checkpoint.random_init import grouped_init
from autoglm_jax.families import get_family


def compile_seconds(fn) -> tuple[float, int]:
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(jax.random.key(0))
    lowered.compile()
    text = lowered.as_text()
    return time.perf_counter() - start, len(re.findall(r"call @_?threefry", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--full-width", action="store_true")
    args = parser.parse_args()
    base = ag.load_config("glm-4-9b").with_dtypes("bfloat16", "bfloat16")
    for layers in args.layers:
        text = base.text.replace(num_layers=layers)
        if not args.full_width:
            text = text.replace(
                d_model=256, ffw_dim=512, num_heads=4, num_kv_heads=2, head_dim=64, vocab_size=4096
            )
        cfg = base.replace(text=text)
        family = get_family(cfg.model_type, "benchmark")
        module, inputs = family.build(cfg, None), family.example_inputs(cfg)
        flax_s, flax_rng = compile_seconds(
            lambda key: nn.unbox(module.init(key, *inputs)["params"])  # noqa: B023
        )
        grouped_s, grouped_rng = compile_seconds(grouped_init(module, inputs))
        row = {
            "layers": layers,
            "d_model": text.d_model,
            "module_init_compile_s": round(flax_s, 2),
            "grouped_init_compile_s": round(grouped_s, 2),
            "generators": [flax_rng, grouped_rng],
            "device": jax.devices()[0].device_kind,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
