#!/usr/bin/env node
// Generates src/generated/openapi.ts from twinreg's OpenAPI description (docs/openapi.json) with
// openapi-typescript, the exact version pinned in package.json. Offline: it reads a local file.
//
//   npm run generate                       writes src/generated/openapi.ts
//   npm run generate -- --check            exits 1 (saying what to run) when the committed file
//                                          differs from a fresh generation; writes nothing
//   npm run generate -- --spec PATH        another description (default: ../../docs/openapi.json,
//                                          or TWINREG_OPENAPI)
//   npm run generate -- --out PATH         another file to write or check (default: the above)
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import openapiTS, { astToString } from "openapi-typescript";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
let target = resolve(root, "src/generated/openapi.ts");

/** A path as the user would like to read it: relative to the working directory when inside it. */
function shown(p) {
  const rel = relative(process.cwd(), p);
  return rel === "" || rel.startsWith("..") ? p : rel;
}

function usage(why) {
  process.stderr.write(`generate: ${why}\nusage: npm run generate [-- [--check] [--spec PATH] [--out PATH]]\n`);
  process.exit(64);
}

let check = false;
let spec = process.env.TWINREG_OPENAPI || resolve(root, "../../docs/openapi.json");
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--check") check = true;
  else if (args[i] === "--spec") {
    if (i + 1 >= args.length) usage("--spec needs a path");
    spec = resolve(args[++i]);
  } else if (args[i] === "--out") {
    if (i + 1 >= args.length) usage("--out needs a path");
    target = resolve(args[++i]);
  } else usage(`unknown argument ${JSON.stringify(args[i])}`);
}

let text;
try {
  text = readFileSync(spec, "utf8");
} catch (err) {
  process.stderr.write(`generate: cannot read the OpenAPI description ${spec}: ${err.message}\n`);
  process.exit(1);
}

const version = createRequire(import.meta.url)("openapi-typescript/package.json").version;
const ast = await openapiTS(JSON.parse(text), {
  // `ttl_seconds` has a default (30) but may be left out of a request: keep it optional.
  defaultNonNullable: false,
  silent: true,
});
const header = `/**
 * twinreg's REST API types, generated from docs/openapi.json by openapi-typescript ${version}.
 * Do not edit: run \`npm run generate\` (in clients/typescript) after the description changes;
 * \`npm run generate -- --check\` fails while this file is out of date.
 */

`;
const fresh = header + astToString(ast);

if (check) {
  let committed = "";
  try {
    committed = readFileSync(target, "utf8");
  } catch {
    // missing: reported as a difference below
  }
  if (committed !== fresh) {
    const a = committed.split("\n");
    const b = fresh.split("\n");
    let line = 0;
    while (line < a.length && line < b.length && a[line] === b[line]) line++;
    process.stderr.write(
      `generate: ${shown(target)} is not what openapi-typescript ${version} generates ` +
        `from ${spec}: first difference at line ${line + 1}\n` +
        `  committed: ${JSON.stringify(a[line] ?? "<end of file>")}\n` +
        `  generated: ${JSON.stringify(b[line] ?? "<end of file>")}\n` +
        `run \`npm run generate\` in clients/typescript and commit the result\n`,
    );
    process.exit(1);
  }
  process.stdout.write(`generate: ${shown(target)} is up to date with ${spec}\n`);
} else {
  writeFileSync(target, fresh);
  process.stdout.write(`generate: wrote ${shown(target)} from ${spec}\n`);
}
