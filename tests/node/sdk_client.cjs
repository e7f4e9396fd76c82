// The official Node SDK (npm `openai`) against the relay: a chat stream, a Responses
// stream, a function tool round trip on each surface, the chat stream helper, runTools,
// and the typed errors. Prints one JSON object of what
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

  // The SDK's own helpers: the chat stream helper assembling a forced call, and runTools
  // running the tool and sending its result back (streamed and not).
  // Each its own cue: the simulator counts a cue's uses across requests.
  const cued = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>';
  const helper = client.chat.completions.stream({
    model: "gptomni", messages: [{ role: "user", content: `Helper? [[simulate: ${cued} ]]` }],
    tools: [{ type: "function", function: tool }], tool_choice: { type: "function", function: { name: tool.name } },
    stream_options: { include_usage: true },
  });
  const doneCalls = [];
  helper.on("tool_calls.function.arguments.done", (event) => doneCalls.push([event.name, JSON.parse(event.arguments)]));
  const helped = await helper.finalChatCompletion();
  out.chat_stream_helper = { done: doneCalls, finish_reason: helped.choices[0].finish_reason,
                             usage: helped.usage.total_tokens > 0 };
  out.run_tools = {};
  for (const stream of [false, true]) {
    const runner = client.chat.completions.runTools({
      model: "gptomni", stream,
      messages: [{ role: "user", content: `Run tools? [[simulate: ${cued} ||| ${stream}: {{tool_result}}. ]]` }],
      tools: [{ type: "function", function: { ...tool, parse: JSON.parse,
                                               function: async ({ city }) => `21 C in ${city}` } }],
    });
    out.run_tools[stream] = { answer: await runner.finalContent(), messages: runner.messages.length };
  }

  // The SDK's typed errors, each with the param, the code and the request id it reads.
  const refusals = {
    bad_request: () => client.chat.completions.create({ model: "gptomni", messages: [{ role: "user", content: "hi" }], n: 2 }),
    image: () => client.chat.completions.create({ model: "gptomni", messages: [{ role: "user", content: [
      { type: "text", text: "look" }, { type: "image_url", image_url: { url: "https://example.com/a.png" } }] }] }),
    not_found: () => client.chat.completions.create({ model: "gpt-9", messages: [{ role: "user", content: "hi" }] }),
    authentication: () => new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "sk-wrong", maxRetries: 0 }).models.list(),
  };
  out.errors = {};
  for (const [name, call] of Object.entries(refusals)) {
    try {
      await call();
      out.errors[name] = "no error";
    } catch (error) {
      out.errors[name] = { class: error.constructor.name, status: error.status, param: error.param ?? null,
                           code: error.code ?? null, request_id: error.requestID ?? null };
    }
  }

  process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
  process.stderr.write(String(error?.stack ?? error));
  process.exit(1);
});
