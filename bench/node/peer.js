'use strict';
// The Node.js peer of bench/messaging.sh: the same two jobs as switchboard,
// done with Slack's official SDKs against the same loopback fake.
//
//   node peer.js serve   one service on 127.0.0.1:$PORT:
//       POST /slack/events  Bolt's HTTPReceiver: verifies X-Slack-Signature with the
//                           signing secret (and the 5-minute timestamp window), parses,
//                           acknowledges (200) and runs a no-op message listener.
//                           Nothing is stored.
//       POST /send          {"to","text"}: @slack/web-api chat.postMessage to the fake
//                           (slackApiUrl), answered 200 {"ok":true,"ts"} once Slack
//                           answered, 502 otherwise. Nothing is stored: there is no
//                           outbox, the answer comes after delivery.
//       GET  /healthz
//   node peer.js loop SECONDS CONCURRENCY
//       no HTTP front: CONCURRENCY loops calling chat.postMessage for SECONDS,
//       prints {"calls","errors","per_s","p50_ms","p99_ms"} as JSON.
//
// Environment: PORT, SLACK_API_URL (e.g. http://127.0.0.1:8080/api/),
// SLACK_SIGNING_SECRET, SLACK_BOT_TOKEN.
const http = require('node:http');
const { App, LogLevel } = require('@slack/bolt');
const { WebClient } = require('@slack/web-api');

const apiUrl = process.env.SLACK_API_URL;
const token = process.env.SLACK_BOT_TOKEN || 'xoxb-bench';
const signingSecret = process.env.SLACK_SIGNING_SECRET;
const agent = new http.Agent({ keepAlive: true });

function webClient() {
  return new WebClient(token, {
    slackApiUrl: apiUrl,
    agent,
    logLevel: LogLevel.ERROR,
    retryConfig: { retries: 0 },
  });
}

function serve() {
  const client = webClient();
  const app = new App({
    signingSecret,
    token,
    // A single-workspace app whose identity is known: no auth.test round trip.
    botId: 'B0BENCH',
    botUserId: 'U0BOT',
    tokenVerificationEnabled: false,
    logLevel: LogLevel.ERROR,
    clientOptions: { slackApiUrl: apiUrl, agent },
    customRoutes: [
      {
        path: '/healthz',
        method: ['GET'],
        handler: (req, res) => {
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end('{"status":"ok"}');
        },
      },
      {
        path: '/send',
        method: ['POST'],
        handler: (req, res) => {
          const chunks = [];
          req.on('data', (c) => chunks.push(c));
          req.on('end', async () => {
            let msg;
            try {
              msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch (e) {
              res.writeHead(400, { 'Content-Type': 'application/json' });
              res.end('{"error":"invalid_json"}');
              return;
            }
            try {
              const r = await client.chat.postMessage({ channel: msg.to, text: msg.text });
              res.writeHead(200, { 'Content-Type': 'application/json' });
              res.end(JSON.stringify({ ok: true, ts: r.ts }));
            } catch (e) {
              res.writeHead(502, { 'Content-Type': 'application/json' });
              res.end(JSON.stringify({ ok: false, error: String(e.code || e.message) }));
            }
          });
        },
      },
    ],
  });
  app.message(async () => {}); // the no-op handler
  app.error(async (e) => console.error('bolt error:', e.message));
  app.start(Number(process.env.PORT)).then(() => console.error(`peer listening on ${process.env.PORT}`));
}

async function loop(seconds, conc) {
  const client = webClient();
  const lat = [];
  let calls = 0;
  let errors = 0;
  const end = Date.now() + seconds * 1000;
  let seq = 0;
  async function worker(w) {
    while (Date.now() < end) {
      const t0 = process.hrtime.bigint();
      try {
        await client.chat.postMessage({ channel: 'C0BENCH', text: `loop ${w}-${seq++}` });
        calls++;
      } catch (e) {
        errors++;
      }
      lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const t0 = Date.now();
  await Promise.all(Array.from({ length: conc }, (_, w) => worker(w)));
  const secs = (Date.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0);
  console.log(JSON.stringify({ calls, errors, per_s: calls / secs, p50_ms: q(0.5), p99_ms: q(0.99) }));
}

const mode = process.argv[2] || 'serve';
if (mode === 'serve') serve();
else if (mode === 'loop') loop(Number(process.argv[3] || 10), Number(process.argv[4] || 64));
else {
  console.error('usage: peer.js serve | loop SECONDS CONCURRENCY');
  process.exit(2);
}
