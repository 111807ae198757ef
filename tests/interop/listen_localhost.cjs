// Preload (`node --require listen_localhost.cjs ...`): makes every TCP server that is given a
// port but no host listen on 127.0.0.1 instead of all interfaces.
//
// @modelcontextprotocol/server-everything's HTTP modes call `app.listen(PORT, cb)` (express ->
// `http.Server.listen`), with PORT a *string* when it comes from the environment, so both
// numeric ports and numeric strings are handled; an options object without `host` gets one.
"use strict";

const net = require("net");

const HOST = process.env.MCPLEX_TEST_LISTEN_HOST || "127.0.0.1";
const original = net.Server.prototype.listen;

function isPort(v) {
  return typeof v === "number" || (typeof v === "string" && /^\d+$/.test(v));
}

net.Server.prototype.listen = function listen(...args) {
  if (args.length === 0 || typeof args[0] === "function") {
    // listen() / listen(cb): an ephemeral port, on HOST.
    args.unshift(0, HOST);
  } else if (args[0] === undefined || args[0] === null) {
    args.splice(0, 1, 0, HOST);
  } else if (isPort(args[0])) {
    if (typeof args[1] !== "string") {
      args.splice(1, 0, HOST);
    }
  } else if (typeof args[0] === "object" && !(args[0] instanceof net.Server) && args[0].path === undefined) {
    if (args[0].host === undefined && args[0].fd === undefined && args[0].handle === undefined && args[0]._handle === undefined) {
      args[0] = Object.assign({}, args[0], { host: HOST });
    }
  }
  return original.apply(this, args);
};
