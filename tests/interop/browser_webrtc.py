"""Runs a WebRTC call in headless Chromium with tern as the only way through.

Usage: browser_webrtc.py CHROMIUM TURN_URI USER PASSWORD [--ignore-certificate-errors]

Serves a page on 127.0.0.1 whose two RTCPeerConnections may use relayed
candidates only (iceTransportPolicy "relay"), with TURN_URI as their one ICE
server; they open a data channel through tern, send a message each way, and
report the selected candidate pair. The page posts its result back here.
Prints that result as JSON; exits 0 when the call connected through relayed
candidates and both messages arrived. Chromium is started here and stopped
by its PID; everything is bounded by TIMEOUT. The optional flag is passed to
Chromium, for a `turns:` server with a self-signed test certificate.
"""

import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading

TIMEOUT = 45

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>tern WebRTC check</title>
<script>
const config = {
  iceServers: [{ urls: [%(uri)s], username: %(user)s, credential: %(password)s }],
  iceTransportPolicy: "relay",
};
async function call() {
  const a = new RTCPeerConnection(config);
  const b = new RTCPeerConnection(config);
  const candidates = { a: [], b: [] };
  a.onicecandidate = (e) => { if (e.candidate) { candidates.a.push(e.candidate.candidate); b.addIceCandidate(e.candidate); } };
  b.onicecandidate = (e) => { if (e.candidate) { candidates.b.push(e.candidate.candidate); a.addIceCandidate(e.candidate); } };
  const channel = a.createDataChannel("tern");
  const fromA = new Promise((resolve) => {
    b.ondatachannel = (e) => {
      e.channel.onmessage = (m) => { e.channel.send("pong:" + m.data); resolve(m.data); };
    };
  });
  const fromB = new Promise((resolve) => { channel.onmessage = (m) => resolve(m.data); });
  channel.onopen = () => channel.send("ping");
  await a.setLocalDescription(await a.createOffer());
  await b.setRemoteDescription(a.localDescription);
  await b.setLocalDescription(await b.createAnswer());
  await a.setRemoteDescription(b.localDescription);
  const [gotA, gotB] = await Promise.all([fromA, fromB]);
  const stats = await a.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  const local = pair && stats.get(pair.localCandidateId);
  const remote = pair && stats.get(pair.remoteCandidateId);
  return {
    ok: true,
    received_by_b: gotA,
    received_by_a: gotB,
    local_type: local && local.candidateType,
    remote_type: remote && remote.candidateType,
    relay_protocol: local && local.relayProtocol,
    candidates,
  };
}
const timeout = new Promise((resolve) => setTimeout(() => resolve({ ok: false, error: "timeout in the page" }), %(page_timeout)d));
Promise.race([call(), timeout])
  .catch((e) => ({ ok: false, error: String(e) }))
  .then((result) => fetch("/result", { method: "POST", body: JSON.stringify(result) }));
</script>
"""


def main():
    chromium, uri, user, password = sys.argv[1:5]
    extra = sys.argv[5:6]
    page = PAGE % {
        "uri": json.dumps(uri),
        "user": json.dumps(user),
        "password": json.dumps(password),
        "page_timeout": (TIMEOUT - 10) * 1000,
    }
    result = {}
    done = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            result.update(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(204)
            self.end_headers()
            done.set()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/" % server.server_address[1]
    profile = tempfile.mkdtemp(prefix="tern-chromium-")
    browser = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Candidates on loopback are what this test has; let WebRTC use them.
            "--allow-loopback-in-peer-connection",
            "--user-data-dir=" + profile,
            *extra,
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not done.wait(TIMEOUT):
            result = {"ok": False, "error": "no result from the page"}
    finally:
        browser.kill()
        browser.wait(10)
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(result))
    relayed = result.get("local_type") == "relay" and result.get("remote_type") == "relay"
    messages = result.get("received_by_b") == "ping" and result.get("received_by_a") == "pong:ping"
    sys.exit(0 if result.get("ok") and relayed and messages else 1)


main()
