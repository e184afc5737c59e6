"""The OpenAI Responses API through opendify, as users run it: openai-python's
`responses.create` (and `stream`, `parse`, `retrieve`, `delete`, `previous_response_id`, a
tool round), the openai-agents SDK's default `Agent` with a function tool, and LangChain's
`ChatOpenAI(use_responses_api=True)`. Against the mock Dify. Run with e2e/run."""

import asyncio
import json
import os

import openai
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

BASE = os.environ["OPENDIFY_URL"] + "/v1"
client = OpenAI(base_url=BASE, api_key="unused")

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city right now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    }
]


def check(label, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + label + ("" if condition else f": {detail}"))
    if not condition:
        check.failed = True


check.failed = False


def create_and_continue():
    first = client.responses.create(model="chat", input="hello responses", instructions="Be brief.")
    check("create: output_text", first.output_text.endswith("hello responses"), first.output_text)
    check("create: status completed", first.status == "completed", first.status)
    check("create: usage", first.usage is not None and first.usage.total_tokens > 0, first.usage)
    second = client.responses.create(model="chat", input="and again", previous_response_id=first.id)
    check("previous_response_id: answered", second.output_text.endswith("and again"), second.output_text)
    check("previous_response_id: echoed", second.previous_response_id == first.id, second.previous_response_id)
    again = client.responses.retrieve(first.id)
    check("retrieve: same response", again.id == first.id and again.output_text == first.output_text, again)
    client.responses.delete(first.id)
    try:
        client.responses.retrieve(first.id)
        check("delete: gone", False, "still retrievable")
    except openai.NotFoundError:
        check("delete: gone", True)
    try:
        client.responses.create(model="chat", input="x", previous_response_id="resp_unknown")
        check("unknown previous_response_id: NotFoundError", False, "no error")
    except openai.NotFoundError as e:
        check("unknown previous_response_id: NotFoundError", "resp_unknown" in str(e), e)


def streamed():
    deltas = []
    kinds = []
    with client.responses.stream(model="chat", input="stream this please") as s:
        for event in s:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = s.get_final_response()
    check("stream: starts with response.created", kinds[:1] == ["response.created"], kinds[:3])
    check("stream: deltas add up to the final text", "".join(deltas) == final.output_text, (deltas, final.output_text))
    check("stream: completed", final.status == "completed", final.status)
    raw = list(client.responses.create(model="chat", input="[[mock:think]] think first", stream=True))
    reasoning = [e for e in raw if e.type == "response.reasoning_summary_text.delta"]
    check("stream=True: reasoning summary deltas", len(reasoning) > 0, [e.type for e in raw])
    try:
        for _ in client.responses.create(model="chat", input="[[mock:error-mid]] fail", stream=True):
            pass
        check("stream failure raises", False, "no exception")
    except openai.APIError as e:
        check("stream failure raises APIError", "Dify" in str(e) or "error" in str(e).lower(), e)


def tool_round(stream: bool):
    label = "tool round " + ("streamed" if stream else "created")
    ask = dict(model="chat", input="What's the weather in Oslo?", tools=TOOLS)
    if stream:
        with client.responses.stream(**ask) as s:
            for _ in s:
                pass
            called = s.get_final_response()
    else:
        called = client.responses.create(**ask)
    calls = [item for item in called.output if item.type == "function_call"]
    check(f"{label}: a get_weather call", len(calls) == 1 and calls[0].name == "get_weather", called.output)
    args = json.loads(calls[0].arguments)
    check(f"{label}: arguments", args == {"city": "Oslo"}, args)
    answer = client.responses.create(
        model="chat",
        previous_response_id=called.id,
        tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )
    check(f"{label}: the answer uses the result", "21" in answer.output_text, answer.output_text)


class Weather(BaseModel):
    city: str
    temp: int


def parsed():
    result = client.responses.parse(model="chat", input="Weather in Oslo as JSON", text_format=Weather)
    check("parse: output_parsed", isinstance(result.output_parsed, Weather), result.output_text)


def agents_sdk():
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city right now."""
        return f"sunny, 21 C in {city}"

    model = OpenAIResponsesModel(model="chat", openai_client=AsyncOpenAI(base_url=BASE, api_key="unused"))
    agent = Agent(name="Weather", instructions="Answer with the tool.", model=model, tools=[get_weather])
    result = asyncio.run(Runner.run(agent, "What's the weather in Oslo?"))
    check("openai-agents: final output uses the tool", "21" in str(result.final_output), result.final_output)
    calls = [i for i in result.new_items if i.type == "tool_call_item"]
    check("openai-agents: one tool call", len(calls) == 1, result.new_items)

    async def streamed_run():
        run = Runner.run_streamed(agent, "What's the weather in Lima?")
        async for _ in run.stream_events():
            pass
        return run.final_output

    final = asyncio.run(streamed_run())
    check("openai-agents streamed: final output", "21" in str(final), final)


def langchain():
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="chat", base_url=BASE, api_key="unused", use_responses_api=True)
    reply = llm.invoke("hello langchain")
    check("langchain responses: invoke", "hello langchain" in reply.text, reply)

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city right now."""
        return f"sunny, 21 C in {city}"

    call = llm.bind_tools([get_weather]).invoke("What's the weather in Oslo?")
    check("langchain responses: bind_tools", call.tool_calls and call.tool_calls[0]["name"] == "get_weather", call)


for step in (create_and_continue, streamed, lambda: tool_round(False), lambda: tool_round(True), parsed, agents_sdk, langchain):
    try:
        step()
    except Exception as e:  # a crash is a failure with its cause, and the next step still runs
        check(getattr(step, "__name__", "step"), False, repr(e))

raise SystemExit(1 if check.failed else 0)
