// The Responses API from Node, as users run it: openai-node's responses.create / stream
// (its accumulator checks every event's item id and index) and the Vercel AI SDK, whose
// `openai(model)` provider speaks the Responses API by default: generateText, streamText and
// a tool round. Against the mock Dify; run with e2e/run.
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs } from "ai";
import { z } from "zod";

const baseURL = process.env.OPENDIFY_URL + "/v1";
let failed = false;
function check(label, ok, detail = "") {
  console.log((ok ? "ok   " : "FAIL ") + label + (ok ? "" : `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`));
  if (!ok) failed = true;
}

async function step(name, fn) {
  try {
    await fn();
  } catch (e) {
    check(name, false, String(e?.stack || e));
  }
}

const client = new OpenAI({ baseURL, apiKey: "unused" });

await step("openai-node create", async () => {
  const first = await client.responses.create({ model: "chat", input: "hello from node" });
  check("openai-node create: output_text", first.output_text.endsWith("hello from node"), first.output_text);
  const second = await client.responses.create({ model: "chat", input: "again", previous_response_id: first.id });
  check("openai-node previous_response_id", second.output_text.endsWith("again"), second.output_text);
});

await step("openai-node stream", async () => {
  const stream = client.responses.stream({ model: "chat", input: "[[mock:think]] stream from node" });
  let text = "";
  for await (const event of stream) {
    if (event.type === "response.output_text.delta") text += event.delta;
  }
  const final = await stream.finalResponse();
  check("openai-node stream: final response", final.status === "completed" && final.output_text === text, final);
  check("openai-node stream: reasoning item", final.output[0]?.type === "reasoning", final.output);
});

const provider = createOpenAI({ baseURL, apiKey: "unused" });

await step("ai-sdk generateText", async () => {
  const { text } = await generateText({ model: provider("chat"), prompt: "hello vercel" });
  check("ai-sdk generateText", text.endsWith("hello vercel"), text);
});

await step("ai-sdk streamText", async () => {
  const result = streamText({ model: provider("chat"), prompt: "stream vercel" });
  let text = "";
  for await (const delta of result.textStream) text += delta;
  check("ai-sdk streamText", text.endsWith("stream vercel"), text);
});

await step("ai-sdk tools", async () => {
  const { text, steps } = await generateText({
    model: provider("chat"),
    prompt: "What's the weather in Oslo?",
    tools: {
      get_weather: tool({
        description: "The weather in a city right now",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => `sunny, 21 C in ${city}`,
      }),
    },
    stopWhen: stepCountIs(3),
  });
  const calls = steps.flatMap((s) => s.toolCalls);
  check("ai-sdk tools: one get_weather call", calls.length === 1 && calls[0].toolName === "get_weather", calls);
  check("ai-sdk tools: the answer uses the result", text.includes("21"), text);
});

process.exit(failed ? 1 : 0);
