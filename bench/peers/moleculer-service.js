// A Moleculer broker with the NATS transporter serving `bench.echo`:
// `node moleculer-service.js NATS_URL`. Prints "ready" once started.
import { ServiceBroker } from "moleculer";

const broker = new ServiceBroker({
  nodeID: "bench-service",
  transporter: process.argv[2],
  logger: false,
});
broker.createService({
  name: "bench",
  actions: { echo: (ctx) => ctx.params },
});
await broker.start();
console.log("ready");
process.on("SIGTERM", async () => {
  await broker.stop();
  process.exit(0);
});
