"""An agent whose model is an ensemble: it calls a tool, reads the result and answers from it, offline.

    python examples/langchain_agent.py
    python examples/langchain_agent.py "What is the weather in Oslo?" --ensemble qwen-0.5b

The loop is the classic tool-calling agent, written with langchain-core alone: the model (bound to the tools)
either answers or asks for tool calls; each call is run and its result sent back, until it answers. Small
models tend to ask for a call they already have the result of; the loop then asks for the answer with the
tools hidden (``tool_choice="none"``) instead of running the call again.
"""

from __future__ import annotations

import argparse
import json
import sys

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolCall, ToolMessage
from langchain_core.tools import BaseTool, tool

from ensemblehub_integrations.langchain import ChatEnsemble

FORECASTS = {"paris": "sunny, 24 °C", "oslo": "light snow, -3 °C", "san francisco": "foggy, 15 °C"}


@tool
def get_weather(city: str) -> str:
    """Get today's weather for a city."""
    return FORECASTS.get(city.split(",")[0].strip().lower(), "no forecast for that city")


def run_agent(llm: ChatEnsemble, question: str, tools: list[BaseTool], max_steps: int = 4) -> list[BaseMessage]:
    """Run the tool loop; return the whole conversation (the last message is the answer)."""
    by_name = {t.name: t for t in tools}
    model = llm.bind_tools(tools)
    answer_now = llm.bind_tools(tools, tool_choice="none")
    messages: list[BaseMessage] = [
        SystemMessage("You are a helpful assistant. Use the tools when they can answer the question."),
        HumanMessage(question),
    ]
    done: set[str] = set()  # calls already run: name + arguments
    for step in range(max_steps):
        reply = (model if step < max_steps - 1 else answer_now).invoke(messages)
        calls = reply.tool_calls if isinstance(reply, AIMessage) else []
        if calls and all(_key(c) in done for c in calls):
            reply = answer_now.invoke(messages)  # the results are in the conversation already
            calls = []
        messages.append(reply)
        if not calls:
            break
        for call in calls:
            print(f"-> {call['name']}({call['args']})")
            result = by_name[call["name"]].invoke(call)
            print(f"<- {result.content}")
            messages.append(result)
            done.add(_key(call))
    return messages


def _key(call: ToolCall) -> str:
    return f"{call['name']}:{json.dumps(call['args'], sort_keys=True)}"


def main(argv: list[str] | None = None) -> list[BaseMessage]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the weather in Paris today?")
    parser.add_argument("--ensemble", default="duo")
    parser.add_argument("--config", help="YAML config (default: the packaged one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    llm = ChatEnsemble(model=args.ensemble, config=args.config, max_tokens=args.max_tokens, temperature=0)
    messages = run_agent(llm, args.question, [get_weather])
    print(messages[-1].content)
    tool_results = [m for m in messages if isinstance(m, ToolMessage)]
    print(f"[{len(tool_results)} tool call(s); ensemble '{args.ensemble}']")
    return messages


if __name__ == "__main__":
    main(sys.argv[1:])
