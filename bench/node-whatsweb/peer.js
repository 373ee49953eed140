'use strict';
/*
 * The peer of bench/whatsweb.sh: one whatsapp-web.js Client (Puppeteer driving
 * Debian's Chromium) pointed at the WhatsApp Web fixture page instead of
 * web.whatsapp.com, started once; it reports when its 'qr' event fired and
 * then idles until SIGTERM, when it destroys the client (closes Chromium) and
 * exits. The bench measures its memory from outside (/proc) meanwhile.
 *
 * Environment:
 *   FIXTURE_URL      the fixture page (whatsapp-web.js's WhatsWebURL is set to it)
 *   PEER_MODE        same:     exactly the Chromium flags of the whatsweb plugin
 *                              (ignoreDefaultArgs, DevTools over a pipe as ours);
 *                    defaults: Puppeteer's default flags plus ours (how a
 *                              whatsapp-web.js user passes puppeteer.args)
 *   PEER_FLAGS       JSON array: the plugin's flags (from plugins/whatsweb/whatsweb.c)
 *   PEER_PROFILE     a fresh, empty user data directory (NoAuth: nothing kept)
 *   CHROMIUM         the browser [/usr/bin/chromium]
 *   PEER_TIMEOUT_MS  give up waiting for 'qr' [60000]
 * stdout: one JSON line {"ev":"qr", init_ms, start_ms, page_qr_ms, qr,
 * browser_pid, fallback} or {"ev":"error", message}.
 */
const procStart = Date.now() - process.uptime() * 1000;
const url = process.env.FIXTURE_URL;
if (!url) {
    console.error('FIXTURE_URL is not set');
    process.exit(2);
}
// Client.js reads WhatsWebURL from this module when it is first required.
require('whatsapp-web.js/src/util/Constants').WhatsWebURL = url;
const { Client, NoAuth } = require('whatsapp-web.js');

const mode = process.env.PEER_MODE || 'same';
const flags = JSON.parse(process.env.PEER_FLAGS || '[]');
const profile = process.env.PEER_PROFILE;
const chromium = process.env.CHROMIUM || '/usr/bin/chromium';
const timeoutMs = Number(process.env.PEER_TIMEOUT_MS || 60000);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const common = {
    executablePath: chromium,
    headless: true,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
};
const puppeteerOpts =
    mode === 'same'
        ? {
              ...common,
              ignoreDefaultArgs: true,
              pipe: true,
              args: [...flags, `--user-data-dir=${profile}`, 'about:blank'],
          }
        : {
              ...common,
              userDataDir: profile,
              args: flags.filter((f) => f !== '--remote-debugging-pipe'),
          };

const client = new Client({
    authStrategy: new NoAuth(),
    puppeteer: puppeteerOpts,
    webVersionCache: { type: 'none' },
});

let reported = false;
let t0 = 0;

async function pageQrAt() {
    try {
        return await client.pupPage.evaluate(
            () => (window.__fixture && window.__fixture.qrShownAt) || null,
        );
    } catch (e) {
        return null;
    }
}

async function report(qr, fallback) {
    if (reported) return;
    reported = true;
    const t1 = Date.now();
    const shown = client.pupPage ? await pageQrAt() : null;
    const proc = client.pupBrowser && client.pupBrowser.process();
    out({
        ev: 'qr',
        init_ms: t1 - t0,
        start_ms: t1 - procStart,
        page_qr_ms: shown ? shown - t0 : null,
        qr,
        browser_pid: proc ? proc.pid : null,
        fallback: fallback || null,
    });
}

client.on('qr', (qr) => {
    report(qr, null);
});

async function fallback(why) {
    // whatsapp-web.js did not get to 'qr': report when the page showed its QR.
    if (reported) return;
    let text = null;
    try {
        if (client.pupPage) {
            await client.pupPage.waitForSelector('div[data-ref]', { timeout: 5000 });
            text = await client.pupPage.evaluate(() =>
                document.querySelector('div[data-ref]').getAttribute('data-ref'),
            );
        }
    } catch (e) {
        /* nothing on the page either */
    }
    if (text) await report(text, String(why));
    else {
        reported = true;
        out({ ev: 'error', message: String(why) });
    }
}

let stopping = false;
async function stop() {
    if (stopping) return;
    stopping = true;
    const proc = client.pupBrowser && client.pupBrowser.process();
    try {
        await Promise.race([
            client.destroy(),
            new Promise((_, rej) => setTimeout(() => rej(new Error('destroy timed out')), 10000)),
        ]);
    } catch (e) {
        if (proc && proc.exitCode === null) proc.kill('SIGKILL');
    }
    process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

setTimeout(() => fallback('no qr event in ' + timeoutMs + ' ms'), timeoutMs).unref();
t0 = Date.now();
client.initialize().catch((e) => fallback('initialize: ' + (e && e.message ? e.message : e)));
