// Cloudflare's own client (AgentClient from the `agents` npm package) against agentbook.
//
// Driven by tests/test_serve_npm.py. Settings come from the environment, never argv, so
// the token shows up in no process listing or URL:
//   AB_HOST   127.0.0.1:PORT        AB_TOKEN  the server's token
//   AB_AGENT  the Python class name (AgentClient turns it into kebab case itself)
//   AB_NAME   the agent's name
//   AB_AUTH   "ticket" (a fresh one-time ticket per connection attempt, from `query`),
//             "subprotocol" (protocols ["agents", "bearer.<token>"]) or "none"
// Prints one JSON object with what happened.
import { AgentClient } from "agents/client";
import WS from "ws";

const { AB_HOST: host, AB_TOKEN: token, AB_AGENT: agent, AB_NAME: name } = process.env;
const auth = process.env.AB_AUTH || "ticket";
const out = { states: [], stateErrors: [], chunks: [] };

async function ticket() {
  const response = await fetch(`http://${host}/_agentbook/ticket`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}` },
  });
  return (await response.json()).ticket;
}

function waitFor(predicate, what, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    const check = () => {
      if (predicate()) {
        clearTimeout(timer);
        resolve();
      } else setTimeout(check, 5);
    };
    check();
  });
}

const options = {
  agent,
  name,
  host,
  WebSocket: WS,
  maxRetries: 3,
  onStateUpdate: (state, source) => out.states.push({ state, source }),
  onStateUpdateError: (error) => out.stateErrors.push(error),
  onConnectionError: (error) => {
    out.connectionError = { code: error.code, reason: error.reason };
  },
};
if (auth === "ticket") options.query = async () => ({ ticket: await ticket() });
if (auth === "subprotocol") options.protocols = ["agents", `bearer.${token}`];

const client = new AgentClient(options);
try {
  if (auth === "none") {
    await waitFor(() => out.connectionError, "the refusal");
  } else {
    await client.ready;
    out.identity = { name: client.name, agent: client.agent };
    out.ready = client.state;
    out.protocol = client.protocol;

    client.setState({ n: 100, by: "node" });
    await waitFor(() => out.states.some((s) => s.source === "server" && s.state.n === 100),
      "the echo of setState");

    out.inc = await client.call("inc", [5]);
    out.stateAfterInc = client.state;

    out.streamed = await client.call("count", [3], {
      stream: { onChunk: (chunk) => out.chunks.push(chunk), onDone: (r) => (out.done = r) },
    });

    client.setState({ n: -1 });
    await waitFor(() => out.stateErrors.length > 0 && client.state.n !== -1,
      "the refusal and the authoritative state");
    out.stateAfterRefusal = client.state;

    for (const method of ["_private", "validate_state_change", "nope"]) {
      try {
        await client.call(method, []);
        out[method] = "called";
      } catch (error) {
        out[method] = error.message;
      }
    }
  }
} catch (error) {
  out.error = String(error && error.stack ? error.stack : error);
} finally {
  client.close();
  console.log(JSON.stringify(out));
}
