"""The Anthropic Messages API through opendify, as users run it: anthropic-python's
`messages.create` and `messages.stream` (with `get_final_message()`), a system prompt, an
image block, a whole tool round (tool_use → tool_result → final text) streamed and not,
the model list, errors as the SDK's exceptions, and LangChain's ChatAnthropic (`invoke`,
`bind_tools`). Against the mock Dify, which follows opendify's tool instructions like a
model. Run with e2e/run."""

import base64
import os
import sys

import anthropic

BASE = os.environ["OPENDIFY_URL"]  # Anthropic's SDK adds /v1 itself
client = anthropic.Anthropic(base_url=BASE, api_key="unused", max_retries=0)

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city right now",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]

# A 1×1 PNG.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()


def get_weather(city: str) -> str:
    return f"sunny, 21 C in {city}"


def check(label, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + label + ("" if condition else f": {detail}"))
    if not condition:
        check.failed = True


check.failed = False


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


def create_text():
    message = client.messages.create(
        model="chat", max_tokens=256, messages=[{"role": "user", "content": "Hello from the SDK"}]
    )
    check("create: a Message", message.type == "message" and message.role == "assistant", message)
    check("create: its text", text_of(message) == "Echo: Hello from the SDK", message.content)
    check("create: stop_reason end_turn", message.stop_reason == "end_turn", message.stop_reason)
    check("create: usage", message.usage.input_tokens == 10 and message.usage.output_tokens > 0, message.usage)
    check("create: an id msg_…", message.id.startswith("msg_"), message.id)


def stream_text():
    with client.messages.stream(
        model="chat", max_tokens=256, messages=[{"role": "user", "content": "Stream this, please"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    check("stream: text_stream pieces", "".join(pieces) == "Echo: Stream this, please", pieces)
    check("stream: get_final_message", text_of(final) == "Echo: Stream this, please", final)
    check("stream: stop_reason end_turn", final.stop_reason == "end_turn", final.stop_reason)
    check("stream: usage", final.usage.output_tokens > 0 and final.usage.input_tokens == 10, final.usage)
    # The raw events too, as the SDK types them.
    events = [event.type for event in client.messages.create(
        model="chat", max_tokens=64, stream=True, messages=[{"role": "user", "content": "raw"}])]
    check("stream=True: the event sequence",
          events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
          and "content_block_delta" in events, events)


def system_prompt():
    message = client.messages.create(
        model="chat", max_tokens=256, system="You are terse.",
        messages=[{"role": "user", "content": "With a system prompt"}],
    )
    # The mock echoes the whole query: the system prompt is framed into it.
    text = text_of(message)
    check("system: framed into the first query",
          "[System instructions]\nYou are terse." in text and text.endswith("[Current message]\nWith a system prompt"),
          text)


def image_block():
    message = client.messages.create(
        model="chat", max_tokens=256,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
            {"type": "text", "text": "What is in this image?"},
        ]}],
    )
    check("image: answered", text_of(message) == "Echo: What is in this image?", message.content)


def tool_round(stream: bool):
    label = f"tools {'stream' if stream else 'create'}"
    messages = [{"role": "user", "content": "What's the weather in Oslo?"}]

    def call(messages):
        if stream:
            with client.messages.stream(model="chat", max_tokens=256, tools=TOOLS, messages=messages) as s:
                for _ in s:
                    pass
                return s.get_final_message()
        return client.messages.create(model="chat", max_tokens=256, tools=TOOLS, messages=messages)

    first = call(messages)
    uses = [block for block in first.content if block.type == "tool_use"]
    check(f"{label}: stop_reason tool_use", first.stop_reason == "tool_use", first)
    check(f"{label}: one tool_use of get_weather", len(uses) == 1 and uses[0].name == "get_weather", first.content)
    check(f"{label}: its input", uses and uses[0].input == {"city": "Oslo"}, uses)
    check(f"{label}: a toolu_ id", uses and uses[0].id.startswith("toolu_"), uses)
    messages.append({"role": "assistant", "content": first.content})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": uses[0].id, "content": get_weather(**uses[0].input)}
    ]})
    final = call(messages)
    check(f"{label}: the final answer uses the result", "sunny, 21 C in Oslo" in text_of(final), final.content)
    check(f"{label}: stop_reason end_turn", final.stop_reason == "end_turn", final.stop_reason)


def tool_runner():
    # The SDK's own tool loop, where it has one.
    if not hasattr(client.beta.messages, "tool_runner"):
        print("skip tool_runner: not in this SDK")
        return
    from anthropic import beta_tool

    @beta_tool
    def get_weather_tool(city: str) -> str:
        """The weather in a city right now.

        Args:
            city: the city
        """
        return get_weather(city)

    get_weather_tool.name = "get_weather"
    runner = client.beta.messages.tool_runner(
        model="chat", max_tokens=256, tools=[get_weather_tool],
        messages=[{"role": "user", "content": "What's the weather in Lima?"}],
    )
    last = None
    for message in runner:
        last = message
    check("tool_runner: the loop ends with the tool's result", last is not None and "sunny, 21 C in Lima" in text_of(last),
          last)


def models_and_errors():
    models = client.models.list()
    ids = [m.id for m in models]
    check("models.list: Anthropic's ModelInfo", "chat" in ids and all(m.type == "model" for m in models.data), ids)
    check("models.retrieve", client.models.retrieve("chat").display_name == "Mock chat", client.models.retrieve("chat"))
    try:
        client.messages.create(model="nope", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        check("unknown model: NotFoundError", False, "no exception")
    except anthropic.NotFoundError as e:
        check("unknown model: NotFoundError", e.body["error"]["type"] == "not_found_error", e.body)
    try:
        client.messages.count_tokens(model="chat", messages=[{"role": "user", "content": "hi"}])
        check("count_tokens: NotFoundError", False, "no exception")
    except anthropic.NotFoundError as e:
        check("count_tokens: NotFoundError", "cannot count tokens" in e.message, e.message)
    try:
        with client.messages.stream(model="chat", max_tokens=64,
                                    messages=[{"role": "user", "content": "[[mock:error-mid]]"}]) as s:
            for _ in s:
                pass
        check("error mid-stream: raised", False, "no exception")
    except anthropic.APIStatusError as e:
        check("error mid-stream: raised with Anthropic's body", e.body["error"]["type"] == "api_error", e.body)


def langchain():
    from langchain_anthropic import ChatAnthropic
    from langchain_core.tools import tool

    llm = ChatAnthropic(model="chat", base_url=BASE, api_key="unused", max_tokens=256, max_retries=0)
    reply = llm.invoke("Hello LangChain")
    check("langchain invoke", reply.content == "Echo: Hello LangChain" or reply.text == "Echo: Hello LangChain",
          reply.content)
    streamed = "".join(chunk.text for chunk in llm.stream("Hello stream"))
    check("langchain stream", streamed == "Echo: Hello stream", streamed)

    @tool
    def get_weather_tool(city: str) -> str:
        """The weather in a city right now."""
        return get_weather(city)

    get_weather_tool.name = "get_weather"
    bound = llm.bind_tools([get_weather_tool])
    message = bound.invoke("What's the weather in Paris?")
    check("langchain bind_tools: a tool call", message.tool_calls and message.tool_calls[0]["name"] == "get_weather",
          message)
    check("langchain bind_tools: its arguments", message.tool_calls and message.tool_calls[0]["args"] == {"city": "Paris"},
          message.tool_calls)
    from langchain_core.messages import HumanMessage, ToolMessage
    history = [HumanMessage("What's the weather in Paris?"), message,
               ToolMessage(get_weather("Paris"), tool_call_id=message.tool_calls[0]["id"])]
    final = bound.invoke(history)
    check("langchain bind_tools: the tool's result answered", "sunny, 21 C in Paris" in final.text, final.content)


create_text()
stream_text()
system_prompt()
image_block()
tool_round(stream=False)
tool_round(stream=True)
tool_runner()
models_and_errors()
langchain()
sys.exit(1 if check.failed else 0)
