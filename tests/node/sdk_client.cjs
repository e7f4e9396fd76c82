// The official Node SDK (npm `openai`) against the relay: a chat stream, a Responses
// stream, and a function tool round trip on each surface. Prints one JSON object of what
// it saw; tests/test_node_sdk.py asserts on it. Env: NODE_MODULES, BASE_URL, API_KEY, CUE.
const path = require("path");
const OpenAI = require(path.join(process.env.NODE_MODULES, "openai")).default;

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY, maxRetries: 0 });
const tool = {
  name: "get_weather",
  description: "Weather in a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

async function main() {
  const out = {};

  const chatStream = await client.chat.completions.create({
    model: "gptomni", stream: true, messages: [{ role: "user", content: "Hello relay" }],
  });
  let chatText = "";
  let chatFinish = null;
  for await (const chunk of chatStream) {
    chatText += chunk.choices[0]?.delta?.content ?? "";
    chatFinish = chunk.choices[0]?.finish_reason ?? chatFinish;
  }
  out.chat_stream = { text: chatText, finish_reason: chatFinish };

  const stream = client.responses.stream({ model: "gptomni", input: "Hello relay" });
  const types = [];
  let deltas = "";
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const final = await stream.finalResponse();
  // The stream's final response is the SDK's own assembly of the events (no output_text helper).
  const text = final.output.filter((item) => item.type === "message")
    .flatMap((item) => item.content).map((part) => part.text).join("");
  out.responses_stream = { types, deltas, output_text: text, status: final.status };

  const question = `Weather in Paris? ${process.env.CUE}`;
  const first = await client.responses.create({
    model: "gptomni", input: question, tools: [{ type: "function", ...tool }],
  });
  const call = first.output.find((item) => item.type === "function_call");
  const second = await client.responses.create({
    model: "gptomni", tools: [{ type: "function", ...tool }],
    input: [{ role: "user", content: question }, call,
            { type: "function_call_output", call_id: call.call_id, output: "21 C" }],
  });
  out.responses_tools = { name: call.name, arguments: JSON.parse(call.arguments), answer: second.output_text };

  const chatCall = await client.chat.completions.create({
    model: "gptomni", messages: [{ role: "user", content: question }], tools: [{ type: "function", function: tool }],
    stream: true,
  });
  const calls = {};
  let finish = null;
  for await (const chunk of chatCall) {
    for (const delta of chunk.choices[0]?.delta?.tool_calls ?? []) {
      calls[delta.index] ??= { id: delta.id, name: delta.function?.name, arguments: "" };
      calls[delta.index].arguments += delta.function?.arguments ?? "";
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  out.chat_tools = { calls: Object.values(calls).map((c) => ({ ...c, arguments: JSON.parse(c.arguments) })),
                     finish_reason: finish };

  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(String(error?.stack ?? error));
  process.exit(1);
});
