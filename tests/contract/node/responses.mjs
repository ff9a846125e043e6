// Drives the official OpenAI Node SDK's Responses API against Tollgate and prints what it got, as one JSON
// object on stdout, for tests/contract/test_node_sdk.py to check (with the ledger and the upstream's own record).
//
//   TOLLGATE_BASE_URL=http://127.0.0.1:8000/v1 TOLLGATE_API_KEY=tg-... node responses.mjs <model> <text|tools>
//
// text:  a plain answer (not streamed), then a streamed one continuing it with previous_response_id.
// tools: a function call (not streamed), its output sent back with previous_response_id (streamed, through the
//        SDK's stream helper), then a new question's call streamed with create({stream: true}).
import OpenAI from "openai";

const [model, scenario] = process.argv.slice(2);
const client = new OpenAI({
  baseURL: process.env.TOLLGATE_BASE_URL,
  apiKey: process.env.TOLLGATE_API_KEY,
  maxRetries: 0,
});

const weather = {
  type: "function",
  name: "get_weather",
  description: "The weather in a city now.",
  parameters: {
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  },
  strict: true,
};

async function collect(stream) {
  const events = [];
  for await (const event of stream) {
    events.push(event);
  }
  return events;
}

async function text() {
  const first = await client.responses.create({ model, input: "Remember the word marmalade" });
  const events = await collect(
    await client.responses.create({ model, input: "Which word?", previous_response_id: first.id, stream: true }),
  );
  return { first, first_text: first.output_text, events };
}

async function tools() {
  const first = await client.responses.create({ model, input: "What is the weather in Paris?", tools: [weather] });
  const call = first.output.find((item) => item.type === "function_call");
  const stream = client.responses.stream({
    model,
    tools: [weather],
    previous_response_id: first.id,
    input: [{ type: "function_call_output", call_id: call.call_id, output: '{"temperature_c": 18, "sky": "clear"}' }],
  });
  const events = await collect(stream);
  const second = await stream.finalResponse();
  const streamed = await collect(
    // A new question: fakellm keys its conversations by the first user message, and that one has had its answer.
    await client.responses.create({
      model,
      input: "What is the weather in Paris today?",
      tools: [weather],
      stream: true,
    }),
  );
  return { first, second, second_text: second.output_text, events, streamed };
}

try {
  const result = await { text, tools }[scenario]();
  process.stdout.write(JSON.stringify(result));
} catch (error) {
  // The SDK's own error class and the status, so a failing test says what Tollgate answered.
  process.stderr.write(`${error.constructor.name}: ${error.status ?? ""} ${error.message}\n`);
  process.exit(1);
}
