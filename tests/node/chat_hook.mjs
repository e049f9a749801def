// Cloudflare's React chat client, unmodified, rendered headless (react-test-renderer, no DOM):
//   useAgent (agents/react) + useAgentChat (agents/chat/react) -> useChat (@ai-sdk/react, ai 7)
// against an agentbook ChatAgent. Driven by tests/test_serve_chat_npm.py; settings come from
// the environment (never argv, so the token is in no process listing):
//   AB_HOST 127.0.0.1:PORT   AB_TOKEN the server's token   AB_AGENT kebab class   AB_NAME name
//   AB_STEPS  comma-separated steps to run, in order (default: all of them):
//     plain, server_tool, client_tool, approve_here, approve_inbox, reload, drop, stop, clear
// The token goes in the subprotocol (["agents", "bearer.<token>"]) and, for useAgentChat's
// GET .../get-messages, in an Authorization header. Prints one JSON object.
import { useAgentChat } from "agents/chat/react";
import { useAgent } from "agents/react";
import { createElement as h, Suspense, useEffect } from "react";
import TestRenderer from "react-test-renderer";
import WS from "ws";

const { AB_HOST: host, AB_TOKEN: token, AB_AGENT: agentSlug, AB_NAME: name } = process.env;
const steps = (process.env.AB_STEPS || "plain,server_tool,client_tool,approve_here,approve_inbox,reload,drop,stop,clear").split(",");
const auth = { Authorization: `Bearer ${token}` };
const out = { steps: {} };

function waitFor(read, predicate, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      const s = read();
      reject(new Error(`timed out waiting for ${what}; status ${s?.chat.status}, last ${JSON.stringify(s?.chat.messages.at(-1))?.slice(0, 400)}`));
    }, ms);
    const check = () => {
      const value = read();
      if (value && predicate(value)) {
        clearTimeout(timer);
        resolve(value);
      } else setTimeout(check, 5);
    };
    check();
  });
}

function Probe({ sink }) {
  const agent = useAgent({ agent: agentSlug, name, host, WebSocket: WS, protocols: ["agents", `bearer.${token}`] });
  const chat = useAgentChat({
    agent,
    headers: auth,
    tools: {
      get_client_info: {
        description: "Get information about the client runtime",
        parameters: { type: "object", properties: {}, additionalProperties: false },
        execute: async () => ({ runtime: `node ${process.version}` }),
      },
    },
    onToolCall: async ({ toolCall, addToolOutput }) => {
      sink.toolCalls.push(toolCall);
      if (toolCall.toolName === "get_client_info")
        addToolOutput({ tool: "get_client_info", toolCallId: toolCall.toolCallId, output: { runtime: `node ${process.version}` } });
    },
    onTurnEnd: (event) => sink.turnEnds.push(event),
    onError: (error) => sink.errors.push(String(error?.message ?? error)),
  });
  useEffect(() => {
    sink.current = { agent, chat };
  });
  return null;
}

function mount() {
  const sink = { current: null, toolCalls: [], turnEnds: [], errors: [] };
  const renderer = TestRenderer.create(h(Suspense, { fallback: null }, h(Probe, { sink })));
  return { sink, renderer, read: () => sink.current };
}

const textOf = (m) => (m?.parts ?? []).filter((p) => p.type === "text").map((p) => p.text).join("");
const idle = (s) => s.agent.identified && s.chat.status === "ready" && !s.chat.isStreaming;
const lastSays = (re) => (s) => idle(s) && s.chat.messages.at(-1)?.role === "assistant" && re.test(textOf(s.chat.messages.at(-1)));
const summary = (messages) => messages.map((m) => ({ id: m.id, role: m.role, text: textOf(m), tools: m.parts.filter((p) => p.toolCallId).map((p) => ({ type: p.type, state: p.state, output: p.output ?? null })) }));

let a;
try {
  a = mount();
  await waitFor(a.read, idle, "the first mount");
  out.mounted = { messages: a.read().chat.messages.length };
  for (const step of steps) {
    const s = a.read();
    if (step === "plain") {
      s.chat.sendMessage({ text: "hello from the hook" });
      await waitFor(a.read, lastSays(/How can I help\?$/), "the whole plain reply"); // (not its first word)
    } else if (step === "server_tool") {
      s.chat.sendMessage({ text: "what is the weather in Paris" });
      await waitFor(a.read, lastSays(/sunny/), "the server tool's reply");
    } else if (step === "client_tool") {
      s.chat.sendMessage({ text: "show my client info" });
      // (the continuation lands on the tool call's own message: one assistant message)
      await waitFor(a.read, (x) => lastSays(/get_client_info says/)(x) && x.chat.messages.at(-1).parts.some((p) => p.toolCallId && p.state === "output-available"), "the client tool's continuation");
      out.toolCalls = a.sink.toolCalls.map((c) => c.toolName);
    } else if (step === "approve_here" || step === "approve_inbox") {
      const path = step === "approve_here" ? "/tmp/here" : "/tmp/inbox";
      s.chat.sendMessage({ text: `please delete file '${path}'` });
      const asking = await waitFor(a.read, (x) => idle(x) && x.chat.messages.at(-1)?.parts.some((p) => p.state === "approval-requested"), "the approval request");
      const part = asking.chat.messages.at(-1).parts.find((p) => p.state === "approval-requested");
      out.steps[`${step}_asked`] = { approvalId: part.approval.id, toolCallId: part.toolCallId };
      if (step === "approve_here") asking.chat.addToolApprovalResponse({ id: part.approval.id, approved: true });
      else console.error(JSON.stringify({ waitingForInbox: part.approval.id })); // the test approves in rt.approvals
      await waitFor(a.read, (x) => idle(x) && x.chat.messages.some((m) => m.parts.some((p) => p.toolCallId === part.toolCallId && p.state === "output-available")) && /delete_file says/.test(textOf(x.chat.messages.at(-1))), "the approved continuation");
    } else if (step === "reload") {
      const before = summary(a.read().chat.messages);
      a.renderer.unmount();
      a = mount(); // a page reload: get-messages first, then the transcript on connect
      await waitFor(a.read, (x) => idle(x) && x.chat.messages.length === before.length, "the reloaded transcript");
      out.steps.reload = { before, after: summary(a.read().chat.messages) };
      continue;
    } else if (step === "drop") {
      s.chat.sendMessage({ text: "a slow reply over a dropped socket" });
      await waitFor(a.read, (x) => x.chat.status === "streaming" && /only follow/.test(textOf(x.chat.messages.at(-1))), "the first words");
      a.read().agent.reconnect(); // PartySocket: close and reopen with the same _pk
      await waitFor(a.read, lastSays(/dropped socket/), "the resumed reply", 20000);
    } else if (step === "stop") {
      const ends = a.sink.turnEnds.length;
      s.chat.sendMessage({ text: "a slow reply that gets stopped" });
      await waitFor(a.read, (x) => x.chat.status === "streaming" && textOf(x.chat.messages.at(-1)).length > 0, "the first words");
      await a.read().chat.stop(); // -> cf_agent_chat_request_cancel
      await waitFor(a.read, (x) => idle(x) && a.sink.turnEnds.length > ends, "the stopped turn's end");
      out.steps.stop = { turnEnds: a.sink.turnEnds.slice(ends), text: textOf(a.read().chat.messages.at(-1)) };
      continue;
    } else if (step === "clear") {
      await waitFor(a.read, (x) => idle(x) && a.sink.turnEnds.length > 0, "the last turn's end");
      a.read().chat.clearHistory(); // -> cf_agent_chat_clear
      let server = null;
      for (let i = 0; i < 500 && server?.length !== 0; i++) {
        if (i) await new Promise((r) => setTimeout(r, 10));
        server = await (await fetch(`http://${host}/agents/${agentSlug}/${name}/get-messages`, { headers: auth })).json();
      }
      await waitFor(a.read, (x) => x.chat.messages.length === 0, "an empty local list", 3000).catch(() => {});
      out.steps.clear = { local: a.read().chat.messages.length, server: server.length };
      continue;
    }
    out.steps[step] = { status: a.read().chat.status, messages: summary(a.read().chat.messages) };
  }
  out.errors = a.sink.errors;
} catch (error) {
  out.error = String(error?.stack ?? error);
} finally {
  a?.renderer.unmount();
  console.log(JSON.stringify(out));
  setTimeout(() => process.exit(0), 50);
}
