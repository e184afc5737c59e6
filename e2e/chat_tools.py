"""Agents and structured output through opendify, as users run them: openai-python's tool
loop (streaming and not), its `parse()` helper, LangChain's `bind_tools`, `create_agent` and
`with_structured_output` (json_schema and function_calling). Against the mock Dify, which
follows opendify's tool and format instructions like a model. Run with e2e/run."""

import json
import os
import sys

from openai import OpenAI
from pydantic import BaseModel

BASE = os.environ["OPENDIFY_URL"] + "/v1"
client = OpenAI(base_url=BASE, api_key="unused")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city right now",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def get_weather(city: str) -> str:
    return f"sunny, 21 C in {city}"


def check(label, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + label + ("" if condition else f": {detail}"))
    if not condition:
        check.failed = True


check.failed = False


def openai_tool_loop(stream: bool):
    messages = [{"role": "user", "content": "What's the weather in Oslo?"}]
    if stream:
        with client.chat.completions.stream(model="chat", messages=messages, tools=TOOLS) as s:
            for _ in s:
                pass
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(model="chat", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    calls = choice.message.tool_calls or []
    check(f"openai {'stream' if stream else 'create'}: finish_reason tool_calls", choice.finish_reason == "tool_calls", choice)
    check(f"openai {'stream' if stream else 'create'}: one call to get_weather",
          len(calls) == 1 and calls[0].function.name == "get_weather", calls)
    args = json.loads(calls[0].function.arguments)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": get_weather(**args)})
    final = client.chat.completions.create(model="chat", messages=messages, tools=TOOLS)
    text = final.choices[0].message.content or ""
    check(f"openai {'stream' if stream else 'create'}: the final answer uses the tool's result",
          "sunny, 21 C in Oslo" in text, text)


class Weather(BaseModel):
    city: str
    degrees: int


def openai_parse():
    completion = client.chat.completions.parse(
        model="chat",
        messages=[{"role": "user", "content": "Weather in Bergen, 9 degrees"}],
        response_format=Weather,
    )
    parsed = completion.choices[0].message.parsed
    check("openai parse(): a Weather object", parsed == Weather(city="Bergen", degrees=9), parsed)


def langchain():
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather_tool(city: str) -> str:
        """The weather in a city right now."""
        return get_weather(city)

    get_weather_tool.name = "get_weather"
    llm = ChatOpenAI(base_url=BASE, api_key="unused", model="chat")
    bound = llm.bind_tools([get_weather_tool])
    message = bound.invoke("What's the weather in Paris?")
    check("langchain bind_tools: a tool call", message.tool_calls and message.tool_calls[0]["name"] == "get_weather",
          message)
    check("langchain bind_tools: its arguments", message.tool_calls[0]["args"] == {"city": "Paris"}, message.tool_calls)

    agent = create_agent(model=llm, tools=[get_weather_tool])
    result = agent.invoke({"messages": [{"role": "user", "content": "What's the weather in Rome?"}]})
    last = result["messages"][-1].content
    check("langchain create_agent: the loop ends with the tool's result", "sunny, 21 C in Rome" in last,
          [m.content for m in result["messages"]])

    for method in ["json_schema", "function_calling"]:
        structured = llm.with_structured_output(Weather, method=method)
        value = structured.invoke("Weather in Lisbon, 25 degrees")
        check(f"langchain with_structured_output({method})", value == Weather(city="Lisbon", degrees=25), value)


openai_tool_loop(stream=False)
openai_tool_loop(stream=True)
openai_parse()
langchain()
sys.exit(1 if check.failed else 0)
