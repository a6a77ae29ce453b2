// A @nats-io/services (ADR-32) JavaScript service answering `jsbench.echo`
// with the request's bytes: `node nats-service.js NATS_URL`. Prints "ready".
import { connect } from "@nats-io/transport-node";
import { Svcm } from "@nats-io/services";

const nc = await connect({ servers: process.argv[2] });
const service = await new Svcm(nc).add({ name: "jsbench", version: "1.0.0" });
service.addEndpoint("echo", {
  subject: "jsbench.echo",
  handler: (err, msg) => {
    if (!err) msg.respond(msg.data);
  },
});
await nc.flush();
console.log("ready");
process.on("SIGTERM", async () => {
  await service.stop();
  await nc.drain();
  process.exit(0);
});
