"""A mixed ensemble: a local transformers model and an API member, configured in examples/mixed.yaml.

Offline by default: with no --api-base, the script serves SmolLM2-135M on 127.0.0.1 behind a minimal
OpenAI-compatible server (benchmarks/openai_stub.py) and points the API member at it. Point it at any other
OpenAI-compatible server instead (this project's own `ensemblehub serve`, vLLM, Ollama, OpenAI itself)::

    python examples/mixed_ensemble.py "What is the capital of France?"
    python examples/mixed_ensemble.py --api-base http://127.0.0.1:9876/v1 --api-model smollm2-135m
    OPENAI_API_KEY=... python examples/mixed_ensemble.py --api-base https://api.openai.com/v1 \\
        --api-model gpt-4o-mini --api-key-env OPENAI_API_KEY --prefix-mode instruction
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).with_name("mixed.yaml")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@contextlib.contextmanager
def local_api_server(source: str) -> Iterator[str]:
    """Serve ``source`` over the OpenAI API on a free 127.0.0.1 port; yield its base URL."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.openai_stub import create_app, serve_in_thread
    from ensemblehub_core.generators.hf import HFGenerator
    from ensemblehub_core.models import ModelSpec
    from ensemblehub_core.pool import ModelPool

    served = HFGenerator("served", ModelPool.default().get(ModelSpec(source=source)))
    with serve_in_thread(create_app(served)) as server:
        yield server.api_base


def main(argv: Sequence[str] | None = None) -> str:
    from ensemblehub_core.config import load_config
    from ensemblehub_core.hub import Hub

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("question", nargs="?", default="What is the capital of France? Answer in one sentence.")
    p.add_argument("--api-base", help="an OpenAI-compatible base URL (default: serve SmolLM2 locally)")
    p.add_argument("--api-model", help="the model name that server expects")
    p.add_argument("--api-key-env", help="NAME of the environment variable holding the key")
    p.add_argument("--prefix-mode", help="assistant | continue_final_message | prefix_flag | instruction")
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args(argv)

    config = load_config(CONFIG)
    api = next(m for m in config.ensembles["mixed"].members if m.name == "api")
    if args.api_model:
        api.model = args.api_model
    if args.api_key_env:
        api.options["api_key_env"] = args.api_key_env
    if args.prefix_mode:
        api.options["prefix_mode"] = args.prefix_mode

    with contextlib.ExitStack() as stack:
        api.options["api_base"] = args.api_base or stack.enter_context(
            local_api_server("embedded:smollm2-135m-instruct")
        )
        result = Hub(config).ensemble("mixed").generate(args.question, max_tokens=args.max_tokens)
    for trace in result.trace:
        print(trace.summary())
    print(f"\nanswer: {result.text!r} ({result.finish_reason}, {result.elapsed_s:.1f} s)")
    return result.text


if __name__ == "__main__":
    main()
