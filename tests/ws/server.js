// WebSocket peer for tests/unit/test_ws.c, built on the npm `ws` package (a
// server no one here wrote). Listens on 127.0.0.1 twice, plain and TLS
// (cert and key from argv), and prints {"ws":PORT,"wss":PORT} once ready.
// Behaviour by path:
//   /echo        echoes each message (text as text, binary as binary);
//                the text "close-me" makes it close with 4001 "bye"
//   /fragments   pings, then sends "hello world" in three fragments, then
//                "pong-seen" once the client's pong arrived
//   /big         sends one text message of 17 MiB
//   /drop        sends "bye", then destroys the TCP socket (no close frame)
//   /serverclose closes with 4000 "later"
//   /headers     sends the X-Test request header's value
//   /badutf8     sends bytes ff fe as a text message
//   /badaccept   answers 101 with a wrong Sec-WebSocket-Accept (raw socket)
//   /closes      reports every client close code it saw so far, as JSON
//   /trickle     writes raw frames in pieces 40 ms apart (headers and payloads
//                split, a ping inside a fragmented message, 16- and 64-bit
//                lengths), then "done pong" once the client's pong arrived
'use strict';
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');

const closes = [];
const wss = new WebSocketServer({ noServer: true, maxPayload: 64 << 20 });

wss.on('connection', (ws, req) => {
  const path = req.url.split('?')[0];
  ws.on('close', (code) => closes.push({ path, code }));
  ws.on('error', () => {});
  if (path === '/echo') {
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'close-me') ws.close(4001, 'bye');
      else ws.send(data, { binary: isBinary });
    });
  } else if (path === '/fragments') {
    ws.on('pong', () => ws.send('pong-seen'));
    ws.ping('are-you-there');
    ws.send('hel', { fin: false });
    ws.send('lo ', { fin: false });
    ws.send('world', { fin: true });
  } else if (path === '/big') {
    ws.send(Buffer.alloc(17 << 20, 0x61), { binary: false });
  } else if (path === '/drop') {
    ws.send('bye', () => setTimeout(() => ws.terminate(), 50));
  } else if (path === '/serverclose') {
    ws.close(4000, 'later');
  } else if (path === '/headers') {
    ws.send(String(req.headers['x-test'] || ''));
  } else if (path === '/badutf8') {
    ws.send(Buffer.from([0xff, 0xfe]), { binary: false });
  } else if (path === '/trickle') {
    let pong = false;
    ws.on('pong', () => { pong = true; });
    const b = (...parts) => Buffer.concat(parts.map((x) => (typeof x === 'string' ? Buffer.from(x) : Buffer.from(x))));
    const mid = Buffer.alloc(200, 0x78); // 'x' * 200, 16-bit length
    const large = Buffer.alloc(70000, 0x79); // 'y' * 70000, 64-bit length
    const pieces = [
      [0x81], b([0x03], 'a'), 'bc', // "abc": header split, payload split
      b([0x01, 0x03], 'hel'), // "hello world" in three fragments,
      b([0x89, 0x02], 'pi'), // a ping between them,
      b([0x00, 0x03], 'lo '), [0x80, 0x05], 'world',
      [0x81, 0x7e], [0x00], b([0xc8], mid.subarray(0, 100)), mid.subarray(100),
      [0x82, 0x7f, 0, 0, 0, 0], [0, 1, 0x11, 0x70], large.subarray(0, 30000), large.subarray(30000),
    ];
    const sock = ws._socket;
    let i = 0;
    const next = () => {
      if (i < pieces.length) {
        const p = pieces[i++];
        sock.write(typeof p === 'string' ? Buffer.from(p) : Buffer.from(p));
        setTimeout(next, 40);
      } else {
        ws.send(pong ? 'done pong' : 'done');
      }
    };
    next();
  } else if (path === '/closes') {
    ws.send(JSON.stringify(closes));
  }
});

function upgrade(req, socket, head) {
  if (req.url.startsWith('/badaccept')) {
    socket.end('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n' +
               'Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
}

const plain = http.createServer();
plain.on('upgrade', upgrade);
const tls = https.createServer({ cert: fs.readFileSync(process.argv[2]),
                                 key: fs.readFileSync(process.argv[3]) });
tls.on('upgrade', upgrade);
plain.listen(0, '127.0.0.1', () => {
  tls.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ ws: plain.address().port, wss: tls.address().port }) + '\n');
  });
});
process.on('SIGTERM', () => process.exit(0));
