// A wearable's always-on connection over WebSocket: authenticate with the first frame, pipeline
// several requests without waiting for each answer, match replies by `id`, and handle frames
// the server pushes on its own (events and progress notes, which carry no request id).
//
// Runs against `pilot-bridge serve --demo` with Node >= 22 (built-in WebSocket). Node 20 and 21
// need the flag that enables it:
//
//     pilot-bridge serve --demo &
//     node examples/wearable.mjs                          # Node >= 22
//     node --experimental-websocket examples/wearable.mjs # Node 20, 21
//
// Environment: PILOT_BRIDGE_URL (default http://127.0.0.1:8080), PILOT_BRIDGE_KEY (default: the
// demo key `serve --demo` prints).

const base = (process.env.PILOT_BRIDGE_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const key = process.env.PILOT_BRIDGE_KEY ?? "op_live_DemoKeyForLocalTestingOnly00000000";

if (typeof WebSocket === "undefined") {
  console.error("This Node has no built-in WebSocket: use Node >= 22, or run with --experimental-websocket.");
  process.exit(2);
}

const socket = new WebSocket(`${base.replace(/^http/, "ws")}/api/v1/native/outreachpilot/ws`);
const waiting = new Map(); // request id -> { resolve, reject }
let authenticated;
const authed = new Promise((resolve, reject) => (authenticated = { resolve, reject }));

socket.addEventListener("open", () => {
  // Authenticate by first frame, so the key never appears in a URL or proxy log.
  socket.send(JSON.stringify({ type: "auth", token: key }));
});

socket.addEventListener("message", (msg) => {
  const frame = JSON.parse(msg.data);
  if (frame.type === "auth_ok") return authenticated.resolve();
  if (frame.type === "event") {
    console.log(`  [event ${frame.event}] ${frame.spoken_summary ?? ""}`);
    return;
  }
  if (frame.type === "progress") {
    console.log(`  [progress ${frame.id}] ${frame.spoken_summary}`);
    return;
  }
  const pending = frame.id && waiting.get(frame.id);
  if (!pending) {
    console.log("  [unmatched frame]", JSON.stringify(frame));
    return;
  }
  waiting.delete(frame.id);
  pending.resolve(frame);
});

socket.addEventListener("close", (e) => {
  const err = new Error(`socket closed: ${e.code} ${e.reason}`);
  authenticated.reject(err);
  for (const p of waiting.values()) p.reject(err);
});

let next = 0;
function request(body) {
  const id = `w-${++next}`;
  socket.send(JSON.stringify({ ...body, id }));
  return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}

function spoken(frame) {
  return frame.ok ? frame.data.spoken_summary : frame.error.spoken_summary;
}

await authed;
console.log("connected and authenticated");

// Three questions at once: the replies may come back in any order; ids pair them up.
const questions = [
  { action: { type: "lookup_person", personName: "Sarah Chen" } },
  { action: { type: "campaign_stats", campaignRef: "Seed founders" } },
  { action: { type: "reply_inbox", unreadOnly: true } },
];
const replies = await Promise.all(questions.map(request));
for (const [i, r] of replies.entries()) {
  if (!r.ok) throw new Error(`request ${i} failed: ${JSON.stringify(r.error)}`);
  console.log(`  assistant: ${spoken(r)}  (${r.meta.server_timing})`);
}

// Queued work: the result arrives later as a pushed event on servers that send them.
const research = await request({
  action: { type: "start_research", company: "Acme", topic: "hiring plans" },
  idempotencyKey: `research-${Date.now()}`,
});
console.log(`  assistant: ${spoken(research)}`);
if (!research.ok || research.data.mode !== "queued") throw new Error(JSON.stringify(research));

socket.close(1000, "done");
