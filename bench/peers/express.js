// Express JSON echo (the seed's stack): `node express.js PORT`.
// Prints "ready" once listening; bench/run drives it over keep-alive HTTP.
import express from "express";

const port = Number(process.argv[2]);
const app = express();
app.use(express.json());
app.post("/echo", (req, res) => res.json(req.body));
const server = app.listen(port, "127.0.0.1", () => console.log("ready"));
server.keepAliveTimeout = 30_000;
process.on("SIGTERM", () => server.close(() => process.exit(0)));
