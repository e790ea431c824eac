"""Ensembles through LiteLLM's own API: ``litellm.completion(model="ensemble/<name>")``, offline.

    python examples/litellm_usage.py                  # the packaged `duo` ensemble
    python examples/litellm_usage.py --ensemble trio --stream
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

# LiteLLM fetches its model cost map from the network at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from ensemblehub_integrations.litellm import register


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the capital of France?")
    parser.add_argument("--ensemble", default="duo")
    parser.add_argument("--config", help="YAML config (default: $ENSEMBLEHUB_CONFIG, else the packaged one)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--async", dest="use_async", action="store_true", help="use litellm.acompletion")
    args = parser.parse_args(argv)

    register(args.config)  # adds the `ensemble` provider to LiteLLM
    model = f"ensemble/{args.ensemble}"
    messages = [{"role": "user", "content": args.question}]
    if args.use_async:
        reply = asyncio.run(litellm.acompletion(model=model, messages=messages, max_tokens=args.max_tokens))
    elif not args.stream:
        reply = litellm.completion(model=model, messages=messages, max_tokens=args.max_tokens)
    else:
        parts = []
        for chunk in litellm.completion(model=model, messages=messages, max_tokens=args.max_tokens, stream=True):
            piece = chunk.choices[0].delta.content or "" if chunk.choices else ""
            parts.append(piece)
            print(piece, end="", flush=True)
        print()
        return "".join(parts)
    text = reply.choices[0].message.content or ""
    print(text)
    print(f"[{reply.model}: {reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens]")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
