"""Legacy completions and audio through opendify, as users run them: LlamaIndex's
`OpenAILike(is_chat_model=False)` (complete() and stream_complete(), which call
/v1/completions), openai-python's `completions.create` (streamed and not), its
`audio.transcriptions.create` with a small WAV file and `audio.speech.create` with OpenAI's
default voice. Against the mock Dify (`writer` is a completion app, `chat` a chat app with
both speech features on). Run with e2e/run."""

import io
import os
import sys
import wave

import openai
from openai import OpenAI

BASE = os.environ["OPENDIFY_URL"] + "/v1"
client = OpenAI(base_url=BASE, api_key="unused")


def check(label, condition, detail=""):
    print(("ok   " if condition else "FAIL ") + label + ("" if condition else f": {detail}"))
    if not condition:
        check.failed = True


check.failed = False


def llama_index():
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(api_base=BASE, api_key="unused", model="writer", is_chat_model=False)
    answer = llm.complete("Say hi")
    check("llama-index complete(): the app's answer", answer.text == "Echo: Say hi", answer.text)
    pieces = list(llm.stream_complete("Stream hi"))
    deltas = "".join(p.delta or "" for p in pieces)
    check("llama-index stream_complete(): the answer in several deltas",
          deltas == "Echo: Stream hi" and len(pieces) > 1, [p.delta for p in pieces])
    check("llama-index stream_complete(): the last text is the whole answer",
          pieces[-1].text == "Echo: Stream hi", pieces[-1].text)


def openai_completions():
    completion = client.completions.create(model="writer", prompt="Once upon a time", max_tokens=16)
    choice = completion.choices[0]
    check("openai completions.create: text_completion", completion.object == "text_completion", completion)
    check("openai completions.create: text and finish_reason",
          choice.text == "Echo: Once upon a time" and choice.finish_reason == "stop", choice)
    check("openai completions.create: usage", completion.usage and completion.usage.total_tokens > 0, completion.usage)

    chunks = list(client.completions.create(model="chat", prompt="Stream it", stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    check("openai completions.create(stream=True): the chunks add up", text == "Echo: Stream it", text)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    check("openai completions.create(stream=True): finish_reason only on the last choice chunk",
          finishes[-1] == "stop" and all(f is None for f in finishes[:-1]), finishes)
    check("openai completions.create(stream=True): a usage chunk last",
          not chunks[-1].choices and chunks[-1].usage and chunks[-1].usage.total_tokens > 0, chunks[-1])

    try:
        client.completions.create(model="writer", prompt="The start", suffix="the end")
        check("openai completions.create(suffix=…): refused", False, "no error")
    except openai.BadRequestError as e:
        check("openai completions.create(suffix=…): a 400 naming suffix", e.body.get("param") == "suffix", e.body)


def small_wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 1600)  # 0.1 s of silence
    return buffer.getvalue()


def audio():
    wav = small_wav()
    transcript = client.audio.transcriptions.create(model="chat", file=("hello.wav", wav))
    check("openai audio.transcriptions.create: Dify's transcript",
          transcript.text == f"transcript of {len(wav)} bytes of hello.wav", transcript)
    text = client.audio.transcriptions.create(model="chat", file=("hello.wav", wav), response_format="text")
    check("openai audio.transcriptions.create(response_format='text'): a str",
          isinstance(text, str) and text.startswith("transcript of"), text)
    try:
        client.audio.transcriptions.create(model="chat", file=("hello.wav", wav), response_format="verbose_json")
        check("openai audio.transcriptions.create(verbose_json): refused", False, "no error")
    except openai.BadRequestError as e:
        check("openai audio.transcriptions.create(verbose_json): a 400 naming response_format",
              e.body.get("param") == "response_format", e.body)

    speech = client.audio.speech.create(model="chat", voice="alloy", input="hi")
    check("openai audio.speech.create: Dify's audio", speech.content.startswith(b"ID3"), speech.content[:16])
    check("openai audio.speech.create: Dify's content type",
          speech.response.headers.get("content-type") == "audio/mpeg", speech.response.headers)
    with client.audio.speech.with_streaming_response.create(model="chat", voice="alloy", input="hello") as r:
        streamed = b"".join(r.iter_bytes())
    check("openai audio.speech streamed: the same kind of audio", streamed.startswith(b"ID3"), streamed[:16])


llama_index()
openai_completions()
audio()
sys.exit(1 if check.failed else 0)
