// A second Moleculer broker calling `bench.echo` through the same
// nats-server: `node moleculer-caller.js NATS_URL IN_FLIGHT DURATION_MS BYTES [WARMUP_MS]`.
// The first WARMUP_MS (default 500) are not measured: a fresh process's JIT
// is still compiling the hot path.
// Prints one JSON line: {"ops", "elapsed_ms", "latency_us": [p50, p90, p99, p99.9]}.
import { ServiceBroker } from "moleculer";

const [url, inFlight, durationMs, bytes, warmupMs = "500"] = process.argv.slice(2);
const broker = new ServiceBroker({
  nodeID: "bench-caller",
  transporter: url,
  logger: false,
});
await broker.start();
await broker.waitForServices("bench");
const payload = { data: "x".repeat(Number(bytes)) };
const warmupEnd = process.hrtime.bigint() + BigInt(warmupMs) * 1_000_000n;
async function warmup() {
  while (process.hrtime.bigint() < warmupEnd) {
    await broker.call("bench.echo", payload);
  }
}
await Promise.all(Array.from({ length: Number(inFlight) }, warmup));
const latencies = [];
const started = process.hrtime.bigint();
const deadline = started + BigInt(durationMs) * 1_000_000n;
async function loop() {
  while (process.hrtime.bigint() < deadline) {
    const asked = process.hrtime.bigint();
    await broker.call("bench.echo", payload);
    latencies.push(Number(process.hrtime.bigint() - asked) / 1000);
  }
}
await Promise.all(Array.from({ length: Number(inFlight) }, loop));
const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
latencies.sort((a, b) => a - b);
const at = (q) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0);
console.log(JSON.stringify({
  ops: latencies.length,
  elapsed_ms: elapsedMs,
  latency_us: [at(0.5), at(0.9), at(0.99), at(0.999)],
}));
await broker.stop();
