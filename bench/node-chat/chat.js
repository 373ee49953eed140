'use strict';
// Node.js side of bench/providers-chat.sh: the fake Discord Gateway, the
// Discord peers built with Discord's official Node packages, and the signer
// of the interaction pool. (The Slack peer is bench/node/peer.js, reused.)
//
//   node chat.js gateway PORT HEARTBEAT_MS
//       fake Discord Gateway on 127.0.0.1:PORT (the `ws` package's server):
//       Hello (op 10) with heartbeat_interval; Identify (op 2) -> READY
//       (s 1, session_id, resume_gateway_url = this server); Resume (op 6) ->
//       RESUMED; Heartbeat (op 1) -> ACK (op 11). GET /stats on the same
//       port: {"open","identified","ready_sent","resumed","heartbeats"}.
//   node chat.js keygen DIR
//       an Ed25519 key pair: DIR/ed25519.pem (PKCS#8), prints the public key hex.
//   node chat.js sign DIR COUNT TAG OUT
//       COUNT interaction POSTs (type 2, application command, unique ids),
//       signed like Discord (Ed25519 over X-Signature-Timestamp + body, one
//       timestamp = now), one per line: "<ts>\t<sig hex>\t<body>".
//   node chat.js interactions PORT PUBLIC_KEY_HEX
//       plain node:http server: POST / verified with discord-interactions'
//       verifyKey (401 otherwise), PING -> {"type":1}, commands -> {"type":5},
//       components -> {"type":6}. Nothing is stored. GET /healthz.
//   node chat.js send PORT API_BASE
//       POST /send/K {"to","text"}: @discordjs/rest (one REST client per
//       bot K, token "bench-bot-K", default global limit 50/s per bot, as
//       Discord's) POST /channels/{to}/messages to the fake; 200 once the fake
//       answered, 502 otherwise. GET /healthz.
//   node chat.js clients N API_BASE
//       N discord.js Clients (one bot token each) logged in against the fake
//       REST (GET /gateway/bot) and Gateway; prints "ready N" once all are
//       ready, then idles; GET /healthz on $PORT answers {"ready":n}.
//   node chat.js rawws N GATEWAY_URL
//       N bare `ws` Gateway sessions (Hello, Identify, heartbeats), the
//       lightest Node peer; $PORT /healthz as for clients.
//   node chat.js tlsfront PORT TARGET_PORT CERT KEY
//       TLS on 127.0.0.1:PORT in front of 127.0.0.1:TARGET_PORT (the fake
//       Gateway as wss://, the way Discord serves it).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');

const mode = process.argv[2];
const args = process.argv.slice(3);

function healthz(getReady) {
  const port = Number(process.env.PORT || 0);
  if (!port) return;
  http
    .createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ ready: getReady(), rss_kb: Math.round(process.memoryUsage().rss / 1024) }));
    })
    .listen(port, '127.0.0.1');
}

function gateway(port, hbMs) {
  const { WebSocketServer } = require('ws');
  const stats = { open: 0, identified: 0, ready_sent: 0, resumed: 0, heartbeats: 0 };
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(stats));
  });
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 1 << 20 });
  const url = `ws://127.0.0.1:${port}`;
  let sessions = 0;
  wss.on('connection', (ws) => {
    stats.open++;
    let seq = 0;
    ws.on('close', () => stats.open--);
    ws.on('error', () => {});
    ws.send(JSON.stringify({ op: 10, s: null, t: null, d: { heartbeat_interval: hbMs } }));
    ws.on('message', (raw) => {
      let m;
      try {
        m = JSON.parse(raw.toString());
      } catch (e) {
        ws.close(4002, 'decode error');
        return;
      }
      if (m.op === 1) {
        stats.heartbeats++;
        ws.send('{"op":11,"s":null,"t":null,"d":null}');
      } else if (m.op === 2) {
        stats.identified++;
        const sid = `sess-${++sessions}`;
        const appId = '1098765432109876000';
        ws.send(
          JSON.stringify({
            op: 0,
            s: ++seq,
            t: 'READY',
            d: {
              v: 10,
              user: { id: String(1098765432109000000n + BigInt(sessions)), username: 'fakebot', discriminator: '0',
                global_name: null, avatar: null, bot: true, flags: 0, verified: true, mfa_enabled: false },
              guilds: [],
              session_id: sid,
              resume_gateway_url: url,
              shard: m.d && m.d.shard ? m.d.shard : undefined,
              application: { id: appId, flags: 0 },
              private_channels: [],
              presences: [],
              relationships: [],
              user_settings: {},
              _trace: ['fake-gateway'],
            },
          }),
        );
        stats.ready_sent++;
      } else if (m.op === 6) {
        stats.resumed++;
        ws.send(JSON.stringify({ op: 0, s: (m.d && m.d.seq ? m.d.seq : 0) + 1, t: 'RESUMED', d: {} }));
      }
    });
  });
  server.listen(port, '127.0.0.1', () => console.error(`fake gateway on ${url}`));
}

function keygen(dir) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  fs.writeFileSync(path.join(dir, 'ed25519.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const der = publicKey.export({ type: 'spki', format: 'der' });
  console.log(der.subarray(der.length - 32).toString('hex'));
}

function sign(dir, count, tag, out) {
  const key = crypto.createPrivateKey(fs.readFileSync(path.join(dir, 'ed25519.pem')));
  const ts = String(Math.floor(Date.now() / 1000));
  const fd = fs.openSync(out, 'w');
  const lines = [];
  for (let i = 0; i < count; i++) {
    const id = `14${tag}${String(i).padStart(9, '0')}`;
    const body = JSON.stringify({
      id,
      application_id: '1098765432109876000',
      type: 2,
      token: `itok-${tag}-${i}`,
      version: 1,
      channel_id: '1100000000000000001',
      guild_id: '1000000000000000001',
      member: { user: { id: '2000000000000000001', username: 'alice' } },
      data: { id: '900', name: 'weather', type: 1, options: [{ name: 'city', type: 3, value: `Paris ${i}` }] },
    });
    const sig = crypto.sign(null, Buffer.from(ts + body), key).toString('hex');
    lines.push(`${ts}\t${sig}\t${body}\n`);
    if (lines.length >= 4096) {
      fs.writeSync(fd, lines.join(''));
      lines.length = 0;
    }
  }
  fs.writeSync(fd, lines.join(''));
  fs.closeSync(fd);
}

function interactions(port, pub) {
  const { verifyKey } = require('discord-interactions');
  http
    .createServer((req, res) => {
      if (req.method === 'GET') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end('{"status":"ok"}');
        return;
      }
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', async () => {
        const raw = Buffer.concat(chunks);
        const sig = req.headers['x-signature-ed25519'];
        const ts = req.headers['x-signature-timestamp'];
        let ok = false;
        try {
          ok = !!sig && !!ts && (await verifyKey(raw, sig, ts, pub));
        } catch (e) {
          ok = false;
        }
        if (!ok) {
          res.writeHead(401, { 'Content-Type': 'application/json' });
          res.end('{"error":"bad_signature"}');
          return;
        }
        let ix;
        try {
          ix = JSON.parse(raw.toString('utf8'));
        } catch (e) {
          res.writeHead(400);
          res.end();
          return;
        }
        const type = ix.type === 1 ? 1 : ix.type === 3 ? 6 : 5;
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ type }));
      });
    })
    .listen(port, '127.0.0.1', () => console.error(`interactions peer on ${port}`));
}

function send(port, api) {
  const { REST } = require('@discordjs/rest');
  const { Routes } = require('discord-api-types/v10');
  const rests = new Map();
  const restFor = (k) => {
    let r = rests.get(k);
    if (!r) {
      r = new REST({ api, version: '10', retries: 0, timeout: 15000 }).setToken(`bench-bot-${k}`);
      rests.set(k, r);
    }
    return r;
  };
  http
    .createServer((req, res) => {
      if (req.method === 'GET') {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end('{"status":"ok"}');
        return;
      }
      const m = /^\/send\/(\d+)$/.exec(req.url);
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', async () => {
        let msg;
        try {
          msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (e) {
          res.writeHead(400);
          res.end();
          return;
        }
        try {
          const r = await restFor(m ? m[1] : '0').post(Routes.channelMessages(msg.to), { body: { content: msg.text } });
          res.writeHead(200, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ ok: true, id: r.id }));
        } catch (e) {
          res.writeHead(502, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify({ ok: false, error: String(e.code || e.message) }));
        }
      });
    })
    .listen(port, '127.0.0.1', () => console.error(`send peer on ${port}`));
}

async function clients(n, api) {
  const { Client, GatewayIntentBits } = require('discord.js');
  let ready = 0;
  healthz(() => ready);
  const all = [];
  for (let i = 0; i < n; i++) {
    const c = new Client({
      intents: [GatewayIntentBits.Guilds, GatewayIntentBits.GuildMessages, GatewayIntentBits.DirectMessages,
        GatewayIntentBits.MessageContent],
      rest: { api },
    });
    c.once('ready', () => {
      ready++;
      if (ready === n) console.log(`ready ${n}`);
    });
    c.on('error', (e) => console.error('client error:', e.message));
    all.push(c);
    c.login(`bench-bot-${i}`).catch((e) => console.error('login failed:', e.message));
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 20));
  }
  setInterval(() => {}, 1 << 30);
}

function rawws(n, url) {
  const WebSocket = require('ws');
  let ready = 0;
  healthz(() => ready);
  for (let i = 0; i < n; i++) {
    let seq = null;
    let timer = null;
    const ws = new WebSocket(`${url}/?v=10&encoding=json`, { perMessageDeflate: false });
    ws.on('message', (raw) => {
      const m = JSON.parse(raw.toString());
      if (m.s) seq = m.s;
      if (m.op === 10) {
        const iv = m.d.heartbeat_interval;
        setTimeout(() => {
          ws.send(JSON.stringify({ op: 1, d: seq }));
          timer = setInterval(() => ws.send(JSON.stringify({ op: 1, d: seq })), iv);
        }, Math.random() * iv);
        ws.send(JSON.stringify({ op: 2, d: { token: `bench-bot-${i}`, intents: 37377,
          properties: { os: 'linux', browser: 'bench', device: 'bench' } } }));
      } else if (m.op === 0 && m.t === 'READY') {
        ready++;
        if (ready === n) console.log(`ready ${n}`);
      }
    });
    ws.on('close', () => timer && clearInterval(timer));
    ws.on('error', (e) => console.error('ws error:', e.message));
  }
}

function tlsfront(port, target, cert, key) {
  const tls = require('node:tls');
  const net = require('node:net');
  tls
    .createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (s) => {
      const c = net.connect(target, '127.0.0.1');
      s.pipe(c);
      c.pipe(s);
      s.on('error', () => c.destroy());
      c.on('error', () => s.destroy());
      s.on('close', () => c.destroy());
      c.on('close', () => s.destroy());
    })
    .listen(port, '127.0.0.1', () => console.error(`tls front on ${port} -> ${target}`));
}

if (mode === 'gateway') gateway(Number(args[0]), Number(args[1] || 45000));
else if (mode === 'keygen') keygen(args[0]);
else if (mode === 'sign') sign(args[0], Number(args[1]), args[2], args[3]);
else if (mode === 'interactions') interactions(Number(args[0]), args[1]);
else if (mode === 'send') send(Number(args[0]), args[1]);
else if (mode === 'clients') clients(Number(args[0]), args[1]);
else if (mode === 'rawws') rawws(Number(args[0]), args[1]);
else if (mode === 'tlsfront') tlsfront(Number(args[0]), Number(args[1]), args[2], args[3]);
else {
  console.error('usage: chat.js gateway|keygen|sign|interactions|send|clients|rawws|tlsfront ...');
  process.exit(2);
}
