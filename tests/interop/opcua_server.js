"use strict";
// An OPC-UA server on an independent stack (node-opcua, not asyncua), for
// tests/test_opcua_interop.py: a plant-like address space in a namespace of its own, whose
// index is not 2 (a vendor namespace comes first, as on many real servers).
//
//   node opcua_server.js --port PORT --pki DIR [--path /interop] [--user NAME:PASSWORD]
//
// It listens on 127.0.0.1 only (advertising the machine's host name, as servers do) and
// offers None, and Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss with Sign
// and SignAndEncrypt. Its own certificate and the client certificates it trusts live under
// DIR (node-opcua's layout: own/certs/certificate.pem, trusted/certs/, rejected/certs/);
// unknown client certificates are refused. Anonymous users are accepted, and --user ones.
//
// stdout: one JSON object per line.
//   {"event": "ready", "endpoint", "advertised", "namespace", "namespaceIndex", "certificate"}
//   {"event": "write", "name", "dataType", "value"}   a client wrote a variable
//   {"event": "done", "id"} / {"event": "error", "id", "message"}   a command's answer
// stdin: one JSON command per line, each with an "id":
//   {"cmd": "set", "name": "Temperature", "value": 22.5}    as the device itself would
//   {"cmd": "reset"}                                        every variable to its start value
//   {"cmd": "trust", "file": "agent.der"}                   trust a client certificate
// SIGTERM or the end of stdin shuts the server down cleanly; SIGKILL is a power cut.

// stdout carries this script's JSON lines only: node-opcua's own messages go to stderr
console.log = console.info = console.warn = console.error;

const fs = require("fs");
const path = require("path");
const readline = require("readline");
const {
  OPCUAServer,
  OPCUACertificateManager,
  Variant,
  VariantArrayType,
  DataType,
  StatusCodes,
  SecurityPolicy,
  MessageSecurityMode,
  coerceInt64,
  coerceUInt64,
} = require("node-opcua");

const NAMESPACE = "urn:edgefleet:interop:plant";
const VENDOR_NAMESPACE = "urn:edgefleet:interop:vendor";

// [browse name, node id in our namespace, data type, start value]
const VARIABLES = [
  ["Double", "s=Interop.Double", "Double", 3.141592653589793],
  ["Float", "s=Interop.Float", "Float", 2.5],
  ["Int16", "s=Interop.Int16", "Int16", -1234],
  ["Int32", "s=Interop.Int32", "Int32", -123456789],
  ["Int64", "s=Interop.Int64", "Int64", "9007199254740993"], // 2**53 + 1: not a JS number
  ["UInt16", "s=Interop.UInt16", "UInt16", 65000],
  ["UInt32", "s=Interop.UInt32", "UInt32", 4000000000],
  ["Boolean", "s=Interop.Boolean", "Boolean", true],
  ["String", "s=Interop.String", "String", "Grüße aus node-opcua"],
  ["DateTime", "s=Interop.DateTime", "DateTime", "2024-03-18T07:30:00.250Z"],
  // subtypes of built-in types, as many PLCs use them: written as Double and DateTime
  ["Interval", "s=Interop.Interval", "Duration", 1500.0],
  ["Stamp", "s=Interop.Stamp", "UtcTime", "2025-01-02T03:04:05.000Z"],
  // numeric node ids
  ["Temperature", "i=1001", "Double", 21.5],
  ["Setpoint", "i=1002", "Int16", 42],
  ["Counter", "i=1003", "UInt32", 7],
  ["Running", "i=1004", "Boolean", false],
];

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function emit(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function toVariant(builtIn, value) {
  switch (builtIn) {
    case "Int64":
      return new Variant({
        dataType: DataType.Int64,
        arrayType: VariantArrayType.Scalar,
        value: coerceInt64(String(value)),
      });
    case "UInt64":
      return new Variant({
        dataType: DataType.UInt64,
        arrayType: VariantArrayType.Scalar,
        value: coerceUInt64(String(value)),
      });
    case "DateTime":
      return new Variant({ dataType: DataType.DateTime, value: new Date(value) });
    default:
      return new Variant({ dataType: DataType[builtIn], value });
  }
}

function fromVariant(variant) {
  const value = variant.value;
  switch (variant.dataType) {
    case DataType.Int64:
    case DataType.UInt64: {
      // node-opcua keeps 64-bit integers as [high, low] 32-bit words
      const [high, low] = value;
      const unsigned = (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0);
      const signed = variant.dataType === DataType.Int64 ? BigInt.asIntN(64, unsigned) : unsigned;
      return signed.toString();
    }
    case DataType.DateTime:
      return value.toISOString();
    default:
      return value;
  }
}

async function main() {
  const port = Number(arg("port", "4840"));
  const pki = path.resolve(arg("pki", "interop-pki"));
  // --user NAME:PASSWORD, repeatable: accepted user names (anonymous is accepted too)
  const users = new Map(
    process.argv
      .filter((_, i) => process.argv[i - 1] === "--user")
      .map((pair) => [pair.slice(0, pair.indexOf(":")), pair.slice(pair.indexOf(":") + 1)]),
  );
  const certificateManager = new OPCUACertificateManager({
    rootFolder: pki,
    automaticallyAcceptUnknownCertificate: false,
  });
  const server = new OPCUAServer({
    host: "127.0.0.1",
    port,
    resourcePath: arg("path", "/interop"),
    buildInfo: { productName: "EdgeFleet interop server (node-opcua)" },
    securityPolicies: [
      SecurityPolicy.None,
      SecurityPolicy.Basic256Sha256,
      SecurityPolicy.Aes128_Sha256_RsaOaep,
      SecurityPolicy.Aes256_Sha256_RsaPss,
    ],
    securityModes: [
      MessageSecurityMode.None,
      MessageSecurityMode.Sign,
      MessageSecurityMode.SignAndEncrypt,
    ],
    serverCertificateManager: certificateManager,
    // under DIR too, never node-opcua's default folder in the home directory
    userCertificateManager: new OPCUACertificateManager({ rootFolder: path.join(pki, "user") }),
    allowAnonymous: true,
    userManager: {
      isValidUser: (username, password) => users.get(username) === password,
    },
  });
  await server.initialize();

  const addressSpace = server.engine.addressSpace;
  addressSpace.registerNamespace(VENDOR_NAMESPACE);
  const namespace = addressSpace.registerNamespace(NAMESPACE);
  const plant = namespace.addObject({
    organizedBy: addressSpace.rootFolder.objects,
    browseName: "Plant",
    nodeId: "s=Plant",
  });
  const values = new Map();
  for (const [name, nodeId, dataType, start] of VARIABLES) {
    const builtIn = addressSpace.findDataType(dataType).getBasicDataType();
    const builtInName = DataType[builtIn];
    values.set(name, { builtIn: builtInName, start, variant: toVariant(builtInName, start) });
    namespace.addVariable({
      componentOf: plant,
      browseName: name,
      nodeId,
      dataType,
      accessLevel: "CurrentRead | CurrentWrite",
      userAccessLevel: "CurrentRead | CurrentWrite",
      minimumSamplingInterval: 50,
      value: {
        get: () => values.get(name).variant,
        // node-opcua has already refused a Variant of the wrong type (BadTypeMismatch)
        set: (variant) => {
          values.get(name).variant = variant;
          emit({
            event: "write",
            name,
            dataType: DataType[variant.dataType],
            value: fromVariant(variant),
          });
          return StatusCodes.Good;
        },
      },
    });
  }

  const commands = {
    set({ name, value }) {
      const entry = values.get(name);
      if (!entry) throw new Error(`no variable ${name}`);
      entry.variant = toVariant(entry.builtIn, value);
    },
    reset() {
      for (const entry of values.values()) entry.variant = toVariant(entry.builtIn, entry.start);
    },
    async trust({ file }) {
      await certificateManager.trustCertificate(fs.readFileSync(file));
    },
  };
  const input = readline.createInterface({ input: process.stdin });
  input.on("line", async (line) => {
    let id = null;
    try {
      const command = JSON.parse(line);
      id = command.id;
      await commands[command.cmd](command);
      emit({ event: "done", id });
    } catch (err) {
      emit({ event: "error", id, message: String(err) });
    }
  });

  await server.start();
  const ours = addressSpace.getNamespaceIndex(NAMESPACE);
  emit({
    event: "ready",
    endpoint: `opc.tcp://127.0.0.1:${port}${arg("path", "/interop")}`,
    advertised: server.getEndpointUrl(),
    namespace: NAMESPACE,
    namespaceIndex: ours,
    certificate: path.join(pki, "own", "certs", "certificate.pem"),
  });

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await server.shutdown(0);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  input.on("close", stop); // the test that started it is gone: never outlive it
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
