// The guide's "Anthropic SDK (Node.js)" snippet, with the gateway URL and the
// Majordomo key filled in from the environment by the test.
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({
  baseURL: process.env.GATEWAY_URL,
  apiKey: process.env.ANTHROPIC_API_KEY,
});

const response = await client.messages.create({
  model: 'claude-sonnet-4-20250514',
  max_tokens: 1024,
  messages: [{ role: 'user', content: 'Hello!' }],
}, {
  headers: {
    'X-Majordomo-Key': process.env.MAJORDOMO_KEY,
  },
});

console.log(JSON.stringify(response));
