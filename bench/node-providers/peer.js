'use strict';
// The Node.js peer of bench/providers-meta-telegram.sh and
// bench/providers-messenger-instagram.sh: switchboard's provider jobs done
// with the usual Node.js tools against the same loopback fakes.
//
//   node peer.js serve   one service on 127.0.0.1:$PORT (Express 5):
//     POST /tg/webhook  grammY's webhookCallback(bot, "express", {secretToken}):
//                       refuses a missing/wrong X-Telegram-Bot-Api-Secret-Token
//                       (401), parses the update, runs a no-op message handler,
//                       answers 200. Nothing is stored.
//     POST /tg/send     {"to","text"}: grammY bot.api.sendMessage to the fake Bot API
//                       (client.apiRoot), answered once Telegram answered.
//     POST /wa/webhook  Meta's documented check: HMAC-SHA256 of the raw body with the
//                       app secret, compared with X-Hub-Signature-256 in constant time
//                       (crypto.timingSafeEqual), 401/403 otherwise; JSON parsed, 200.
//     POST /wa/send     {"to","text"}: POST /<version>/<phone>/messages to the fake Graph
//                       API, Bearer token, with node:http (keep-alive agent), answered
//                       after it. (node's fetch did ~520/s here, timing out some.)
//     POST /wa/send-sdk the same through facebook-nodejs-business-sdk
//                       (FacebookAdsApi.call with the fake as urlOverride).
//     POST /fb/webhook, /ig/webhook  as /wa/webhook with FB_APP_SECRET / IG_APP_SECRET
//                       (Messenger and Instagram sign webhooks the same way).
//     POST /fb/send, /ig/send  {"to","text"}: the Send API, POST /<version>/me/messages
//                       {recipient:{id}, messaging_type: RESPONSE, message:{text}} with
//                       node:http, Bearer FB_TOKEN / IG_TOKEN, answered after it.
//     GET  /healthz
//
// Environment: PORT, TG_API_ROOT (fake Bot API base), TG_TOKEN, TG_SECRET,
// GRAPH_BASE (fake Graph API base), WA_PHONE_ID, WA_TOKEN, WA_APP_SECRET,
// FB_TOKEN, FB_APP_SECRET, IG_TOKEN, IG_APP_SECRET (each job needs only its own).
const crypto = require('node:crypto');
const http = require('node:http');
const express = require('express');
const { Bot, webhookCallback } = require('grammy');
const bizSdk = require('facebook-nodejs-business-sdk');

const env = { TG_TOKEN: '1:unused', WA_TOKEN: 'unused', ...process.env };
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

const bot = new Bot(env.TG_TOKEN, {
  // Known identity: no getMe round trip.
  botInfo: {
    id: Number(env.TG_TOKEN.split(':')[0]), is_bot: true, first_name: 'bench', username: 'bench_bot',
    can_join_groups: true, can_read_all_group_messages: false, supports_inline_queries: false,
    can_connect_to_business: false, has_main_web_app: false,
  },
  client: { apiRoot: env.TG_API_ROOT, baseFetchConfig: { agent, compress: false } },
});
bot.on('message', () => {}); // the no-op handler
bot.catch((e) => console.error('grammY error:', e.message));

const app = express();
app.get('/healthz', (req, res) => res.json({ status: 'ok' }));
app.post('/tg/webhook', express.json(), webhookCallback(bot, 'express', { secretToken: env.TG_SECRET }));
app.post('/tg/send', express.json(), async (req, res) => {
  try {
    const m = await bot.api.sendMessage(req.body.to, req.body.text);
    res.json({ ok: true, message_id: m.message_id });
  } catch (e) {
    res.status(502).json({ ok: false, error: String(e.message) });
  }
});

// Meta: verify the raw body before parsing it (WhatsApp, Messenger and Instagram alike).
const metaWebhook = (secret) => (req, res) => {
  const sig = req.get('x-hub-signature-256') || '';
  if (!sig.startsWith('sha256=')) return res.status(401).end();
  const want = crypto.createHmac('sha256', secret || '').update(req.body).digest();
  const got = Buffer.from(sig.slice(7), 'hex');
  if (got.length !== want.length || !crypto.timingSafeEqual(got, want)) return res.status(403).end();
  try {
    JSON.parse(req.body.toString('utf8'));
  } catch (e) {
    return res.status(400).end();
  }
  res.status(200).end();
};
const rawBody = express.raw({ type: '*/*', limit: '3mb' });
app.post('/wa/webhook', rawBody, metaWebhook(env.WA_APP_SECRET));
app.post('/fb/webhook', rawBody, metaWebhook(env.FB_APP_SECRET));
app.post('/ig/webhook', rawBody, metaWebhook(env.IG_APP_SECRET));

const waUrl = `${env.GRAPH_BASE}/v23.0/${env.WA_PHONE_ID}/messages`;
const waBody = (m) => ({
  messaging_product: 'whatsapp', recipient_type: 'individual', to: m.to, type: 'text',
  text: { body: m.text, preview_url: false },
});
// POST with node:http and a keep-alive agent; resolves with the parsed answer.
function postJson(url, headers, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const r = http.request(url, {
      method: 'POST', agent,
      headers: { ...headers, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (resp) => {
      const chunks = [];
      resp.on('data', (c) => chunks.push(c));
      resp.on('end', () => {
        try {
          resolve({ status: resp.statusCode, json: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        } catch (e) {
          reject(e);
        }
      });
    });
    r.on('error', reject);
    r.end(data);
  });
}
app.post('/wa/send', express.json(), async (req, res) => {
  try {
    const r = await postJson(waUrl, { Authorization: `Bearer ${env.WA_TOKEN}` }, waBody(req.body));
    if (r.status !== 200) return res.status(502).json({ ok: false, error: r.json });
    res.json({ ok: true, id: r.json.messages[0].id });
  } catch (e) {
    res.status(502).json({ ok: false, error: String(e.message) });
  }
});

// Messenger / Instagram Send API, answered with message_id after Meta answered.
const sendApi = (token) => async (req, res) => {
  try {
    const r = await postJson(`${env.GRAPH_BASE}/v23.0/me/messages`, { Authorization: `Bearer ${token}` },
      { recipient: { id: req.body.to }, messaging_type: 'RESPONSE', message: { text: req.body.text } });
    if (r.status !== 200) return res.status(502).json({ ok: false, error: r.json });
    res.json({ ok: true, id: r.json.message_id });
  } catch (e) {
    res.status(502).json({ ok: false, error: String(e.message) });
  }
};
app.post('/fb/send', express.json(), sendApi(env.FB_TOKEN));
app.post('/ig/send', express.json(), sendApi(env.IG_TOKEN));

const fbApi = bizSdk.FacebookAdsApi.init(env.WA_TOKEN);
app.post('/wa/send-sdk', express.json(), async (req, res) => {
  try {
    const j = await fbApi.call('POST', [env.WA_PHONE_ID, 'messages'], waBody(req.body), {}, false,
      env.GRAPH_BASE);
    res.json({ ok: true, id: j.messages[0].id });
  } catch (e) {
    res.status(502).json({ ok: false, error: String(e.message || e) });
  }
});

http.createServer({ keepAliveTimeout: 300000 }, app).listen(Number(env.PORT), '127.0.0.1',
  () => console.error(`peer listening on ${env.PORT}`));
