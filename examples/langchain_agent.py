"""An agent whose model is an ensemble, built with LangChain's `create_agent` (LangGraph underneath), offline.

    python examples/langchain_agent.py
    python examples/langchain_agent.py "What is the weather in Paris today?" --ensemble duo

`ChatEnsemble` is an ordinary chat model to the agent: it is bound to the tools, asks for calls, gets each
result back as a tool message and answers from them. The middleware is a crutch for tiny models: a question
that has no tool result yet gets a forced call (``tool_choice="any"``: the model still picks the tool and its
arguments, in the call format), and when the model asks only for calls it already made, it is asked for the
answer with the tools hidden (``tool_choice="none"``) instead of running them again. Larger models need neither.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolCall, ToolMessage
from langchain_core.tools import tool

from ensemblehub_integrations.langchain import ChatEnsemble

FORECASTS = {"paris": "sunny, 24 °C", "oslo": "light snow, -3 °C", "san francisco": "foggy, 15 °C"}
TIMES = {"paris": "14:05 (UTC+1)", "oslo": "14:05 (UTC+1)", "san francisco": "05:05 (UTC-8)"}


def _city(name: str) -> str:
    return name.split(",")[0].strip().lower()


@tool
def get_weather(city: str) -> str:
    """Get today's weather for a city."""
    return FORECASTS.get(_city(city), "no forecast for that city")


@tool
def get_local_time(city: str) -> str:
    """Get the current local time in a city."""
    return TIMES.get(_city(city), "unknown time zone")


TOOLS = [get_weather, get_local_time]


def _key(call: ToolCall) -> str:
    return f"{call['name']}:{json.dumps(call['args'], sort_keys=True)}"


@wrap_model_call
def small_model_tool_use(
    request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
) -> ModelResponse:
    """Force a call while the question has no tool result; when the model asks only for calls it already made,
    ask again for the answer, tools hidden."""
    since_question = _since_last_question(request.messages)
    if not any(isinstance(m, ToolMessage) for m in since_question):
        return handler(request.override(tool_choice="any"))
    response = handler(request)
    made = {_key(c) for m in request.messages if isinstance(m, AIMessage) for c in m.tool_calls}
    reply = response.result[-1] if response.result else None
    if isinstance(reply, AIMessage) and reply.tool_calls and all(_key(c) in made for c in reply.tool_calls):
        return handler(request.override(tool_choice="none"))
    return response


def _since_last_question(messages: list[BaseMessage]) -> list[BaseMessage]:
    last = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    return messages[last + 1:]


def build_agent(llm: ChatEnsemble) -> Any:
    """The agent graph: the ensemble as its model, the two tools, the middleware above."""
    return create_agent(
        llm, TOOLS, middleware=[small_model_tool_use],
        system_prompt="You are a helpful assistant. Use the tools when they can answer the question.",
    )


def main(argv: list[str] | None = None) -> list[BaseMessage]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What time is it in Oslo?")
    parser.add_argument("--ensemble", default="qwen-0.5b")
    parser.add_argument("--config", help="YAML config (default: the packaged one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=8, help="graph steps before the agent gives up")
    args = parser.parse_args(argv)

    llm = ChatEnsemble(model=args.ensemble, config=args.config, max_tokens=args.max_tokens, temperature=0)
    state = build_agent(llm).invoke({"messages": [("user", args.question)]},
                                    config={"recursion_limit": args.max_steps})
    messages: list[BaseMessage] = state["messages"]
    for m in messages:
        if isinstance(m, AIMessage):
            for call in m.tool_calls:
                print(f"-> {call['name']}({call['args']})")
        elif isinstance(m, ToolMessage):
            print(f"<- {m.content}")
    print(messages[-1].content)
    tool_results = [m for m in messages if isinstance(m, ToolMessage)]
    print(f"[{len(tool_results)} tool call(s); ensemble '{args.ensemble}']")
    return messages


if __name__ == "__main__":
    main(sys.argv[1:])
