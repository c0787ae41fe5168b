// The guide's "OpenAI SDK (Node.js)" snippet, with the gateway URL and the
// Majordomo key filled in from the environment by the test.
import OpenAI from 'openai';

const client = new OpenAI({
  baseURL: `${process.env.GATEWAY_URL}/v1`,
  apiKey: process.env.OPENAI_API_KEY,
  defaultHeaders: {
    'X-Majordomo-Key': process.env.MAJORDOMO_KEY,
  },
});

const response = await client.chat.completions.create({
  model: 'gpt-4o',
  messages: [{ role: 'user', content: 'Hello!' }],
});

console.log(JSON.stringify(response));
