// An upstream system as a new user would write it: the CloudEvents JavaScript SDK builds a
// task.requested (an extension attribute, dataschema), the NATS client publishes it on the
// tenant's inbound subject with JetStream, as an NKey user with its own inbox prefix.
// Input (environment): NATS_URL, NKEY_SEED_FILE, INBOX_PREFIX, SUBJECT, MODE
// ("structured" | "binary"), EVENT (JSON: the CloudEvent's attributes and data).
// Output: one JSON line, the JetStream ack ({"stream": ..., "seq": ...}).
import { readFileSync } from "node:fs";
import { CloudEvent, HTTP } from "cloudevents";
import { connect, headers, nkeyAuthenticator } from "nats";

const env = process.env;
const seed = new TextEncoder().encode(readFileSync(env.NKEY_SEED_FILE, "utf8").trim());
const nc = await connect({
  servers: env.NATS_URL,
  authenticator: nkeyAuthenticator(seed),
  inboxPrefix: env.INBOX_PREFIX,
  maxReconnectAttempts: 0,
});
try {
  const event = new CloudEvent(JSON.parse(env.EVENT));
  // The SDK's HTTP binding gives the two content modes; the NATS binding carries the
  // same attributes as message headers (binary) or the whole event as the body.
  const message = env.MODE === "binary" ? HTTP.binary(event) : HTTP.structured(event);
  const hdrs = headers();
  for (const [name, value] of Object.entries(message.headers)) {
    hdrs.set(name, String(value));
  }
  const body = typeof message.body === "string" ? message.body : JSON.stringify(message.body);
  const ack = await nc.jetstream().publish(env.SUBJECT, new TextEncoder().encode(body),
                                           { headers: hdrs });
  console.log(JSON.stringify({ stream: ack.stream, seq: ack.seq }));
} finally {
  await nc.close();
}
