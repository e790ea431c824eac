"""A LangChain chain whose model is an ensemble: prompt | ChatEnsemble | parser, offline on embedded models.

    python examples/langchain_chain.py                      # the packaged `duo` ensemble
    python examples/langchain_chain.py --ensemble trio --stream

The ensemble is any name of the packaged config (`ensemblehub models` lists them) or of ``--config FILE``.
"""

from __future__ import annotations

import argparse
import sys

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from ensemblehub_integrations.langchain import ChatEnsemble

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "You are a concise assistant. Answer in one or two sentences."),
    ("user", "{question}"),
])


def build_chain(llm: ChatEnsemble):  # type: ignore[no-untyped-def]  # a LangChain Runnable
    """prompt | ensemble | plain-text parser."""
    return PROMPT | llm | StrOutputParser()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the capital of France?")
    parser.add_argument("--ensemble", default="duo")
    parser.add_argument("--config", help="YAML config (default: the packaged one)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--stream", action="store_true", help="print each accepted segment as it is decided")
    args = parser.parse_args(argv)

    llm = ChatEnsemble(model=args.ensemble, config=args.config, max_tokens=args.max_tokens, temperature=0)
    chain = build_chain(llm)
    if not args.stream:
        answer = chain.invoke({"question": args.question})
        print(answer)
        return str(answer)
    parts = []
    for piece in chain.stream({"question": args.question}):
        parts.append(piece)
        print(piece, end="", flush=True)
    print()
    return "".join(parts)


if __name__ == "__main__":
    main(sys.argv[1:])
