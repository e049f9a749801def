// Preload (node --import): every server binds 127.0.0.1, whatever host it asked for.
// server-everything listens on all interfaces and has no host option; tests stay on loopback.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "object" && args[0] !== null && !Array.isArray(args[0])) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[0] === "number" || typeof args[0] === "string") {
    const port = args[0];
    const rest = args.slice(1).filter((a) => typeof a === "function" || typeof a === "number");
    const callback = rest.find((a) => typeof a === "function");
    const backlog = rest.find((a) => typeof a === "number");
    return listen.call(this, { port: Number(port), host: "127.0.0.1", backlog }, callback);
  }
  return listen.apply(this, args);
};
