// Run tools/wasm32_probe.py on the 32-bit webassembly MicroPython with a fixed heap.
//
//   node tools/wasm32/run.mjs --heap 64k --lib DIR --run DIR [--stop-on-growth 1]
//
// --lib holds the compiled device tree (servomesh/protocol, servomesh/firmware) and
// wasm32_probe.mpy: it is copied to /lib in the interpreter's file system. --run holds
// servomesh.json and packets.bin (see the probe); they are copied to /run, the probe's current
// folder, and replies.bin is copied back from there. Prints the probe's report as one JSON
// line, with what this script saw of the heap added; exit status 0 when the run is "ok", 1
// when not, 2 when it could not run. tools/bench_wasm32.py drives it.
//
// The pyscript build collects garbage only when a call from JavaScript returns, and grows its
// heap (up to 128 MiB more) when an allocation does not fit, where a board collects or raises
// MemoryError. So each step of the probe is a call of its own, each ends by printing
// micropython.mem_info(), and the run is "ok" only if the heap's total never grew.

import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const HEADER_BYTES = 16;

function parseArgs(argv) {
  const args = { heap: "64k", lib: null, run: null, "stop-on-growth": "0" };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in args) || i + 1 >= argv.length) {
      throw new Error(`usage: node run.mjs --heap 64k --lib DIR --run DIR (bad: ${argv[i]})`);
    }
    args[name] = argv[i + 1];
  }
  if (!args.lib || !args.run) {
    throw new Error("usage: node run.mjs --heap 64k --lib DIR --run DIR");
  }
  const match = /^(\d+)([km]?)$/i.exec(args.heap);
  if (!match) {
    throw new Error(`bad heap size ${args.heap}: use bytes, or a k or m suffix`);
  }
  const scale = { "": 1, k: 1024, m: 1024 * 1024 }[match[2].toLowerCase()];
  args.heapBytes = Number(match[1]) * scale;
  return args;
}

function copyTree(FS, from, to) {
  try {
    FS.mkdir(to);
  } catch {
    // already there
  }
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    const source = path.join(from, entry.name);
    const target = `${to}/${entry.name}`;
    if (entry.isDirectory()) {
      copyTree(FS, source, target);
    } else if (entry.name.endsWith(".mpy")) {
      FS.writeFile(target, fs.readFileSync(source));
    }
  }
}

// Heap totals printed by micropython.mem_info(): "GC: total: 64000, used: ..., max new split: N".
const heap = {
  total: null,
  startUsed: null,
  maxTotal: 0,
  grownCalls: 0,
  firstGrowth: null,
  reserve: 0,
  watching: true,
};
let step = "load";
const printed = [];

function onStdout(line) {
  const match = /^GC: total: (\d+), used: (\d+), free: \d+(?:, max new split: (\d+))?/.exec(line);
  if (match) {
    const total = Number(match[1]);
    if (heap.total === null) {
      heap.total = total;
      heap.startUsed = Number(match[2]);
      heap.reserve = Number(match[3] || 0);
    }
    heap.maxTotal = Math.max(heap.maxTotal, total);
    if (heap.watching && total > heap.total) {
      heap.grownCalls += 1;
      heap.firstGrowth ??= step;
    }
    return;
  }
  if (/^(stack: \d+ out of \d+| No\. of 1-blocks: )/.test(line)) {
    return;
  }
  printed.push(line);
  process.stderr.write(`[probe] ${line}\n`);
}

let stopOnGrowth = false;
const stopped = () => stopOnGrowth && heap.grownCalls > 0;

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const header = Buffer.alloc(HEADER_BYTES);
  const packets = fs.openSync(path.join(args.run, "packets.bin"), "r");
  fs.readSync(packets, header, 0, HEADER_BYTES, 0);
  fs.closeSync(packets);
  stopOnGrowth = args["stop-on-growth"] === "1";
  const warmup = header.readUInt32BE(8);
  const sets = header.readUInt32BE(12);

  const mp = await loadMicroPython({
    heapsize: args.heapBytes,
    stdout: onStdout,
    stderr: (line) => process.stderr.write(`[stderr] ${line}\n`),
  });
  copyTree(mp.FS, args.lib, "/lib");
  mp.FS.mkdir("/run");
  for (const name of ["servomesh.json", "packets.bin"]) {
    mp.FS.writeFile(`/run/${name}`, fs.readFileSync(path.join(args.run, name)));
  }
  mp.FS.chdir("/run");

  step = "start";
  mp.pyimport("micropython").mem_info(); // the heap's size, and what the interpreter holds
  step = "import probe";
  const probe = mp.pyimport("wasm32_probe");
  // One proxy per function, fetched once: each attribute lookup adds a proxy to the heap.
  const [setup, stepName, boot, collect, mark, threshold, link, handle, report] = [
    probe.setup,
    probe.step_name,
    probe.boot,
    probe.collect,
    probe.mark,
    probe.threshold,
    probe.link,
    probe.handle,
    probe.report,
  ];
  step = "setup";
  setup(heap.total, heap.reserve, true);
  let ok = true;
  for (let stage = 0; ; stage++) {
    step = `boot: ${stepName(stage)}`;
    const more = boot(stage);
    if (more <= 0 || stopped()) {
      ok = more === 0;
      break;
    }
  }
  const marks = ["boot", "ready", "warm", "end"]; // the probe's _MARKS
  const measure = (name) => {
    step = `collect before ${name}`;
    collect();
    step = `mark ${name}`;
    mark(marks.indexOf(name));
  };
  if (ok) {
    measure("boot");
    step = "threshold";
    threshold();
    step = "link";
    ok = link() === 0;
  }
  if (ok) {
    measure("ready");
    // One datagram per call: the heap is collected between datagrams when the threshold is
    // crossed, as a board's would be; a board could also collect inside one.
    for (let i = 0; ok && i < warmup + sets; i++) {
      step = `datagram ${i + 1}`;
      ok = handle(1) === 1 && !stopped();
      if (ok && i + 1 === warmup) {
        measure("warm");
      }
    }
    if (ok) {
      measure("end");
    }
  }
  step = "report";
  heap.watching = false; // the report may use the heap the node left: not the node's
  const result = JSON.parse(report());
  result.start_used = heap.startUsed;
  result.heap_requested = args.heapBytes;
  result.heap_total_start = heap.total;
  result.heap_total_max = heap.maxTotal;
  result.heap_grown_calls = heap.grownCalls;
  result.heap_first_growth = heap.firstGrowth;
  result.ok = result.ok && heap.grownCalls === 0;
  if (printed.length) {
    result.printed = printed;
  }
  fs.writeFileSync(path.join(args.run, "replies.bin"), mp.FS.readFile("/run/replies.bin"));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  return result.ok ? 0 : 1;
}

main().then(
  (status) => process.exit(status),
  (error) => {
    process.stderr.write(`run.mjs failed at ${step}: ${error.stack || error}\n`);
    process.exit(2);
  },
);
