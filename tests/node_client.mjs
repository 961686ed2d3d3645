// What a Node backend does with the HTTP API, using only Node's built-ins (Node >= 18):
// start a loopback webhook receiver, POST a job (multipart: fetch + FormData) naming it,
// receive the signed webhook and verify its HMAC-SHA256 signature, then GET the result
// as SRT. Prints one JSON line: {"id", "event", "client_job_id", "srt"}; exits 1 on failure.
//
// env: API_URL, API_KEY, WEBHOOK_SECRET, AUDIO (a WAV file path)
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";

const { API_URL, API_KEY, WEBHOOK_SECRET, AUDIO } = process.env;
const auth = { Authorization: `Bearer ${API_KEY}` };

function verify(headers, body) {
  // X-Whisper-Modal-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
  const ts = headers["x-whisper-modal-timestamp"];
  const sig = headers["x-whisper-modal-signature"] || "";
  if (!ts || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const expected = crypto.createHmac("sha256", WEBHOOK_SECRET).update(`${ts}.`).update(body).digest("hex");
  return sig.split(",").some((part) => {
    const given = Buffer.from(part.trim().replace(/^v1=/, ""), "utf8");
    const want = Buffer.from(expected, "utf8");
    return given.length === want.length && crypto.timingSafeEqual(given, want);
  });
}

let deliver;
const webhook = new Promise((resolve, reject) => {
  deliver = { resolve, reject };
});
const receiver = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const ok = verify(req.headers, body);
    res.writeHead(ok ? 200 : 401).end();
    if (ok) deliver.resolve(JSON.parse(body.toString("utf8")));
    else deliver.reject(new Error("webhook signature did not verify"));
  });
});
await new Promise((resolve) => receiver.listen(0, "127.0.0.1", resolve));
const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;

try {
  const form = new FormData();
  form.append("file", new Blob([fs.readFileSync(AUDIO)], { type: "audio/wav" }), "clip.wav");
  form.append("model", "whisper-1");
  form.append("language", "en");
  form.append("webhook_url", hookUrl);
  const submitted = await fetch(`${API_URL}/v1/jobs`, { method: "POST", headers: auth, body: form });
  if (submitted.status !== 202) throw new Error(`submit: HTTP ${submitted.status} ${await submitted.text()}`);
  const { id, status } = await submitted.json();
  if (!id || !status) throw new Error("submit: no id/status");

  const timer = setTimeout(() => deliver.reject(new Error("no webhook within 300 s")), 300_000);
  const payload = await webhook;
  clearTimeout(timer);
  if (payload.status !== "succeeded") throw new Error(`job ${payload.status}: ${payload.error}`);

  // the webhook goes out as the job ends: the result may need a moment more (409 until then)
  let result;
  for (let i = 0; i < 300; i++) {
    result = await fetch(`${API_URL}/v1/jobs/${id}?format=srt`, { headers: auth });
    if (result.status !== 409) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (result.status !== 200) throw new Error(`result: HTTP ${result.status} ${await result.text()}`);
  const srt = await result.text();
  console.log(JSON.stringify({ id, event: payload.event, client_job_id: payload.client_job_id, srt }));
} catch (err) {
  console.error(String(err));
  process.exitCode = 1;
} finally {
  receiver.close();
}
