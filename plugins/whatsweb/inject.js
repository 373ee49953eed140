/*
 * whatsweb page script: evaluated by the plugin in WhatsApp Web's main world
 * on every new document (Page.addScriptToEvaluateOnNewDocument), compiled into
 * whatsweb.so as a string. Everything that depends on WhatsApp Web's markup
 * and internals is in this one file: the selectors in SEL and the modules in
 * storeOf(). They are the ones whatsapp-web.js uses today (div[data-ref] and
 * its canvas for the QR, the intro image / chat list for "logged in",
 * window.require('WAWebCollections') and friends for window.Store); when
 * WhatsApp changes them, change them here. Only the fixture page of the tests
 * (tests/fixtures/whatsweb) is tested.
 *
 * To the plugin, through the binding window.__sb_emit (Runtime.addBinding),
 * one JSON text per call:
 *   {"ev":"loaded","url"}                       script started in a document
 *   {"ev":"qr","ref","png"}                     QR text and its canvas as a PNG data URL
 *   {"ev":"authenticated"}                      the chat screen appeared
 *   {"ev":"ready","me","version"}               store hooks installed
 *   {"ev":"state","state"}                      WhatsApp's socket state changed
 *   {"ev":"disconnected","reason"}              logged out, or the phone is gone
 *   {"ev":"message","msg":{...}}                a new inbound message
 *   {"ev":"ack","id","ack"}                     ack of an outbound message
 *   {"ev":"error","where","message"}            something here failed
 * From the plugin (Runtime.evaluate, awaitPromise, returnByValue):
 *   window.__sb.send({to, text, media: {data, mimetype, filename, document}, reply_to})
 *     -> {id, t}; throws when it cannot send
 *   window.__sb.state() -> {phase, qr, me}
 */
(function () {
    'use strict';
    if (window.top !== window || window.__sb)
        return;

    const SEL = {
        QR_CONTAINER: 'div[data-ref]',
        QR_CANVAS: 'div[data-ref] canvas',
        QR_RETRY: 'div[data-ref] > span > button',
        LOGGED_IN: '[data-testid="intro-md-beta-logo-dark"], [data-testid="intro-md-beta-logo-light"], ' +
                       '[data-asset-intro-image-light="true"], [data-asset-intro-image-dark="true"], ' +
                       '#pane-side',
    };
    /* Socket states that are not a disconnection (whatsapp-web.js's list). */
    const OK_STATES = ['CONNECTED', 'OPENING', 'PAIRING', 'TIMEOUT'];
    const STORE_WAIT_MS = 120000;

    const sb = {phase: 'loading', qr: null, me: null, store: null, storeTimer: null};

    function emit(ev) {
        try {
            window.__sb_emit(JSON.stringify(ev));
        } catch (e) {
            /* the binding is gone: the plugin detached */
        }
    }

    function fail(where, e) {
        emit({ev: 'error', where, message: String(e && e.message || e)});
    }

    function str(x) {
        if (x === undefined || x === null)
            return null;
        return typeof x === 'string' ? x : String(x._serialized || x);
    }

    /* ---- window.Store from WhatsApp's own modules ---- */
    function storeOf() {
        const req = window.require;
        if (typeof req !== 'function')
            return null;
        const opt = name => {
            try {
                return req(name);
            } catch (e) {
                return null;
            }
        };
        const col = opt('WAWebCollections');
        const sock = opt('WAWebSocketModel');
        if (!col || !col.Msg || !sock)
            return null;
        return {
            Msg: col.Msg,
            Chat: col.Chat,
            AppState: sock.Socket,
            MsgKey: opt('WAWebMsgKey'),
            SendMessage: opt('WAWebSendMsgChatAction'),
            User: opt('WAWebUserPrefsMeUser'),
            WidFactory: opt('WAWebWidFactory'),
            FindChat: opt('WAWebFindChatAction'),
            OpaqueData: opt('WAWebMediaOpaqueData'),
            MediaPrep: opt('WAWebPrepRawMedia'),
            MediaObject: opt('WAWebMediaStorage'),
            MediaTypes: opt('WAWebMmsMediaTypes'),
            MediaUpload: opt('WAWebMediaMmsV4Upload'),
        };
    }

    function serialize(m) {
        const id = m.id || {};
        return {
            id: str(id),
            chat: str(id.remote),
            author: str(m.author || id.participant),
            type: m.type,
            body: m.type === 'chat' ? (m.body || '') : null,
            caption: m.caption || null,
            mimetype: m.mimetype || null,
            filename: m.filename || null,
            size: m.size || null,
            t: m.t || null,
            notify_name: m.notifyName || null,
            quoted: m.quotedStanzaID || null,
            group: !!(id.remote && id.remote.server === 'g.us'),
        };
    }

    function hookStore(S) {
        S.Msg.on('add', m => {
            if (!m.isNewMsg || (m.id && m.id.fromMe))
                return;
            if (m.type === 'ciphertext')
                m.once('change:type', mm => emit({ev: 'message', msg: serialize(mm)}));
            else
                emit({ev: 'message', msg: serialize(m)});
        });
        S.Msg.on('change:ack', (m, ack) => {
            if (m.id && m.id.fromMe)
                emit({ev: 'ack', id: str(m.id), ack});
        });
        S.AppState.on('change:state', (_s, state) => {
            emit({ev: 'state', state});
            if (!OK_STATES.includes(state) && sb.phase === 'ready') {
                sb.phase = 'disconnected';
                emit({ev: 'disconnected', reason: state});
            }
        });
    }

    function waitStore() {
        const started = Date.now();
        const tick = () => {
            sb.storeTimer = null;
            if (sb.phase !== 'authenticated')
                return;
            let S = null;
            try {
                S = storeOf();
            } catch (e) {
                fail('store', e);
            }
            if (!S) {
                if (Date.now() - started > STORE_WAIT_MS)
                    fail('store', 'WhatsApp modules not found (see SEL/storeOf in inject.js)');
                else
                    sb.storeTimer = setTimeout(tick, 200);
                return;
            }
            try {
                hookStore(S);
            } catch (e) {
                fail('hooks', e);
                return;
            }
            sb.store = S;
            sb.phase = 'ready';
            sb.me = S.User ? str(S.User.getMaybeMeUser()) : null;
            emit({ev: 'ready', me: sb.me, version: window.Debug && window.Debug.VERSION || null});
        };
        tick();
    }

    /* ---- the DOM: QR or chat screen ---- */
    let qrTimer = null;
    function readQR() {
        qrTimer = null;
        const box = document.querySelector(SEL.QR_CONTAINER);
        const ref = box && box.getAttribute('data-ref');
        if (!ref)
            return;
        const canvas = document.querySelector(SEL.QR_CANVAS);
        let png = null;
        try {
            png = canvas ? canvas.toDataURL('image/png') : null;
        } catch (e) {
            fail('qr', e);
        }
        sb.qr = ref;
        emit({ev: 'qr', ref, png});
    }

    function check() {
        if (document.querySelector(SEL.LOGGED_IN)) {
            if (sb.phase === 'loading' || sb.phase === 'qr') {
                sb.phase = 'authenticated';
                sb.qr = null;
                emit({ev: 'authenticated'});
                waitStore();
            }
            return;
        }
        const box = document.querySelector(SEL.QR_CONTAINER);
        if (!box)
            return;
        const retry = document.querySelector(SEL.QR_RETRY);
        if (retry)
            retry.click();
        const ref = box.getAttribute('data-ref');
        if (sb.phase === 'ready' || sb.phase === 'authenticated') {
            sb.phase = 'disconnected';
            emit({ev: 'disconnected', reason: 'LOGGED_OUT'});
        }
        if (ref && ref !== sb.qr) {
            sb.phase = 'qr';
            sb.qr = ref;
            /* Let the page finish drawing the canvas for this text. */
            if (!qrTimer)
                qrTimer = setTimeout(readQR, 50);
        }
    }

    /* ---- sending ---- */
    function bytesOf(b64) {
        const bin = atob(b64);
        const out = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++)
            out[i] = bin.charCodeAt(i);
        return out;
    }

    /* whatsapp-web.js's processMediaData: prep, then upload, then the message fields. */
    async function prepMedia(S, media) {
        if (!S.OpaqueData || !S.MediaPrep || !S.MediaUpload)
            throw new Error('media modules not found');
        const mime = media.mimetype || 'application/octet-stream';
        const file = new File([bytesOf(media.data)], media.filename || 'file', {type: mime});
        const od = await S.OpaqueData.createFromData(file, file.type);
        const prep = S.MediaPrep.prepRawMedia(od, {asDocument: !!media.document});
        const md = await prep.waitForPrep();
        const obj = S.MediaObject.getOrCreateMediaObject(md.filehash);
        const mediaType = S.MediaTypes.msgToMediaType({type: md.type, isGif: md.isGif});
        if (media.document)
            md.type = 'document';
        if (obj && obj.consolidate)
            obj.consolidate(md.toJSON());
        const up = await S.MediaUpload.uploadMedia({mimetype: md.mimetype, mediaObject: obj, mediaType});
        const e = up && up.mediaEntry;
        if (!e)
            throw new Error('media upload failed');
        md.set({
            clientUrl: e.mmsUrl,
            deprecatedMms3Url: e.deprecatedMms3Url,
            directPath: e.directPath,
            mediaKey: e.mediaKey,
            mediaKeyTimestamp: e.mediaKeyTimestamp,
            filehash: obj.filehash,
            encFilehash: e.encFilehash,
            uploadhash: e.uploadHash,
            size: obj.size,
        });
        return md.toJSON();
    }

    async function send(a) {
        const S = sb.store;
        if (!S || sb.phase !== 'ready')
            throw new Error('not ready (' + sb.phase + ')');
        const jid = a.to.includes('@') ? a.to : a.to.replace(/[^0-9]/g, '') + '@c.us';
        const wid = S.WidFactory.createWid(jid);
        let chat = S.Chat.get(jid);
        if (!chat && S.FindChat)
            chat = (await S.FindChat.findOrCreateLatestChat(wid)).chat;
        if (!chat)
            throw new Error('no chat ' + jid);
        const meUser = S.User.getMaybeMeUser();
        const isGroup = chat.id.isGroup && chat.id.isGroup();
        const key = new S.MsgKey({from: meUser, to: chat.id, id: await S.MsgKey.newId(),
                                  participant: isGroup ? meUser : undefined, selfDir: 'out'});
        let msg = {id: key, ack: 0, body: a.text || '', from: meUser, to: chat.id, local: true,
                   self: 'out', t: Math.floor(Date.now() / 1000), isNewMsg: true, type: 'chat'};
        if (a.reply_to)
            msg.quotedStanzaID = a.reply_to.split('_').pop();
        if (a.media) {
            const fields = await prepMedia(S, a.media);
            msg = Object.assign(msg, fields, {body: undefined, caption: a.text || undefined,
                                              filename: a.media.filename || fields.filename});
        }
        const r = await S.SendMessage.addAndSendMsgToChat(chat, msg);
        if (Array.isArray(r)) {
            await r[0];
            const res = await r[1];
            if (res === 'ERROR' || (res && res.messageSendResult === 'ERROR'))
                throw new Error('WhatsApp refused the message');
        }
        const m = S.Msg.get(key._serialized);
        if (m && m.ack === -1)
            throw new Error('WhatsApp refused the message');
        return {id: key._serialized, t: msg.t};
    }

    window.__sb = {
        send,
        state: () => ({phase: sb.phase, qr: sb.qr, me: sb.me}),
    };

    function start() {
        emit({ev: 'loaded', url: location.href});
        let queued = false;
        new MutationObserver(() => {
            if (!queued) {
                queued = true;
                Promise.resolve().then(() => {
                    queued = false;
                    check();
                });
            }
        }).observe(document.documentElement, {subtree: true, childList: true, attributes: true,
                                               attributeFilter: ['data-ref']});
        /* A safety net for changes the observer does not report. */
        setInterval(check, 1000);
        check();
    }
    if (document.readyState === 'loading')
        document.addEventListener('DOMContentLoaded', start);
    else
        start();
})();
