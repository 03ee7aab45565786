"use strict";
// An OPC-UA client on an independent stack (node-opcua, not asyncua), for
// tests/test_opcua_interop.py: reads our simulated devices the way a third-party SCADA would.
//
//   node opcua_client.js --endpoint URL --namespace URI --pki DIR [--security POLICY,MODE]
//                        [--read NODE]... [--watch NODE --changes N --timeout-ms MS]
//
// NODE is a node id in which "{ns}" stands for the index of namespace URI on that server
// (read from its NamespaceArray), e.g. "ns={ns};s=Pump1.Level".
//
// stdout, one JSON object per line:
//   {"event": "subscribed"}                          --watch: the monitored item exists
//   {"event": "change", "value", "dataType"}          --watch: each data change
//   {"event": "result", "namespaceIndex", "certificate", "values": {NODE: {...}}, "error"}
// DIR holds the client's certificate (made at the first run: own/certs/client_certificate.pem)
// and the server certificates it trusts (trusted/certs/); unknown servers are refused.
// where each value is {"dataType", "value", "status"}. The exit code is 0 when it connected.

// stdout carries this script's JSON lines only: node-opcua's own messages go to stderr
console.log = console.info = console.warn = console.error;

const path = require("path");
const {
  OPCUAClient,
  OPCUACertificateManager,
  AttributeIds,
  DataType,
  MessageSecurityMode,
  SecurityPolicy,
  TimestampsToReturn,
  ClientMonitoredItem,
} = require("node-opcua");

function args(name) {
  return process.argv.filter((_, i) => process.argv[i - 1] === `--${name}`);
}

function emit(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function shown(variant) {
  const value = variant.value;
  switch (variant.dataType) {
    case DataType.Int64:
    case DataType.UInt64: {
      const [high, low] = value;
      const unsigned = (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0);
      const signed = variant.dataType === DataType.Int64 ? BigInt.asIntN(64, unsigned) : unsigned;
      return signed.toString();
    }
    case DataType.DateTime:
      return value.toISOString();
    case DataType.Null:
      return null;
    default:
      if (value instanceof Float64Array || value instanceof Float32Array || Array.isArray(value)) {
        return Array.from(value);
      }
      return value;
  }
}

async function main() {
  const [endpoint] = args("endpoint");
  const [namespace] = args("namespace");
  const [security = "None,None"] = args("security");
  const [pki] = args("pki");
  const [policy, mode] = security.split(",");
  if (!pki) throw new Error("--pki DIR is required");
  const certificateManager = new OPCUACertificateManager({
    rootFolder: path.resolve(pki),
    automaticallyAcceptUnknownCertificate: false,
  });
  const client = OPCUAClient.create({
    applicationName: "EdgeFleet interop client (node-opcua)",
    endpointMustExist: false, // the server may advertise another host name than 127.0.0.1
    securityPolicy: SecurityPolicy[policy],
    securityMode: MessageSecurityMode[mode],
    clientCertificateManager: certificateManager,
    connectionStrategy: { maxRetry: 0, initialDelay: 100, maxDelay: 200 },
    requestedSessionTimeout: 10000,
  });
  const result = { event: "result", values: {}, error: null };
  await certificateManager.initialize();
  await client.createDefaultCertificate();
  result.certificate = client.certificateFile;
  let session = null;
  try {
    await client.connect(endpoint);
    session = await client.createSession();
    const namespaces = (await session.readNamespaceArray()) || [];
    const index = namespaces.indexOf(namespace);
    result.namespaceIndex = index;
    const resolve = (text) => text.replace("{ns}", String(index));

    const reads = args("read");
    if (reads.length) {
      const values = await session.read(
        reads.map((n) => ({ nodeId: resolve(n), attributeId: AttributeIds.Value })),
      );
      reads.forEach((n, i) => {
        result.values[n] = {
          dataType: DataType[values[i].value.dataType],
          value: shown(values[i].value),
          status: values[i].statusCode.name,
        };
      });
    }

    const [watch] = args("watch");
    if (watch) {
      const wanted = Number(args("changes")[0] || "2");
      const subscription = await session.createSubscription2({
        requestedPublishingInterval: 50,
        requestedMaxKeepAliveCount: 20,
        requestedLifetimeCount: 100,
        publishingEnabled: true,
      });
      const item = await ClientMonitoredItem.create(
        subscription,
        { nodeId: resolve(watch), attributeId: AttributeIds.Value },
        { samplingInterval: 50, discardOldest: true, queueSize: 10 },
        TimestampsToReturn.Both,
      );
      let seen = 0;
      const done = new Promise((resolveDone) => {
        item.on("changed", (dataValue) => {
          emit({
            event: "change",
            dataType: DataType[dataValue.value.dataType],
            value: shown(dataValue.value),
          });
          seen += 1;
          if (seen >= wanted) resolveDone();
        });
        setTimeout(resolveDone, Number(args("timeout-ms")[0] || "10000"));
      });
      emit({ event: "subscribed" });
      await done;
      await subscription.terminate();
    }
  } catch (err) {
    result.error = String(err.message || err);
  } finally {
    if (session) await session.close().catch(() => {});
    await client.disconnect().catch(() => {});
  }
  emit(result);
  process.exit(result.error ? 1 : 0);
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(2);
});
