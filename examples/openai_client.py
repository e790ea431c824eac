"""Use a served ensemble with the official OpenAI client.

Start a server first (it serves the packaged default config's ensembles on 127.0.0.1:9876):

    ensemblehub serve
    python examples/openai_client.py --model smollm2-135m

Set OPENAI_API_KEY (or pass --api-key) when the server was started with an API key.
"""

from __future__ import annotations

import argparse
import json
import os

from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:9876/v1")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "unused"))
    p.add_argument("--model", help="an ensemble name (default: the first one the server lists)")
    p.add_argument("--question", default="What is the capital of France? Answer in one sentence.")
    args = p.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    models = client.models.list().data
    print("served ensembles:", ", ".join(m.id for m in models))
    model = args.model or models[0].id
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": args.question}]

    # A plain request, asking for the ensemble's trace (an extension field) too.
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=48,
                                       extra_body={"ensemble_trace": True})
    print(f"\n{model}: {r.choices[0].message.content!r} ({r.choices[0].finish_reason})")
    print("usage:", r.usage.model_dump() if r.usage else None)
    for trace in (r.model_extra or {}).get("ensemble_trace", []):
        for rnd in trace["rounds"]:
            print("  round", json.dumps(rnd))

    # Streaming: one chunk per segment the ensemble accepts, then the finish reason and usage.
    print(f"\n{model} (streamed): ", end="", flush=True)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=48, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        elif chunk.usage:
            print(f"\nusage: {chunk.usage.model_dump()}")

    # The legacy completions endpoint.
    c = client.completions.create(model=model, prompt="Name a prime number above 100.", max_tokens=24)
    print(f"\ncompletion: {c.choices[0].text!r}")


if __name__ == "__main__":
    main()
