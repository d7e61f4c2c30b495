// Prisma's own schema engine, as `prisma migrate` runs it, driven against a live
// PostgreSQL database. Prisma's CLI downloads a native engine, which these machines cannot
// fetch; the same engine ships as WebAssembly inside the pinned `prisma` package
// (build/schema_engine_bg.wasm), driven here through @prisma/adapter-pg with the
// JavaScript glue of @prisma/schema-engine-wasm (the same wasm-bindgen imports).
//
//   node engine.mjs <command> <json-args>
//
// Commands (the CLI command each one stands for):
//   diff            {url, schema, from, to} `prisma migrate diff`; from/to: {schema: file}
//                                          | {database: true} | {migrations: dir} | "empty"
//   devDiagnostic   {url, migrations}      what `prisma migrate dev` decides: createMigration or reset
//   deploy          {url, migrations}      `prisma migrate deploy`
//   resolveApplied  {url, migrations, name} `prisma migrate resolve --applied <name>`
//   history         {url, migrations}      `prisma migrate status`
// Each prints one JSON document; an engine error exits 1 with the engine's message.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

import pg from "pg";
import { PrismaPg } from "@prisma/adapter-pg";
import { bindMigrationAwareSqlAdapterFactory } from "@prisma/driver-adapter-utils";
import * as glue from "@prisma/schema-engine-wasm/schema_engine_bg";

const require = createRequire(import.meta.url);

// adapter-pg 7.10 describes no PostgreSQL "char" (OID 18) column, and the engine's
// catalog queries return some (pg_class.relkind, pg_constraint.contype, ...). They hold
// one ASCII letter: report them as text.
const PG_CHAR = 18;
const PG_TEXT = 25;
function describeCharAsText(proto) {
  const query = proto.query;
  proto.query = function (...args) {
    const result = query.apply(this, args);
    if (result && typeof result.then === "function") {
      return result.then((r) => {
        for (const f of r?.fields ?? []) {
          if (f.dataTypeID === PG_CHAR) f.dataTypeID = PG_TEXT;
        }
        return r;
      });
    }
    return result;
  };
}
describeCharAsText(pg.Client.prototype);
describeCharAsText(pg.Pool.prototype);

async function loadEngine() {
  const wasmPath = path.join(path.dirname(require.resolve("prisma/package.json")), "build", "schema_engine_bg.wasm");
  const { instance } = await WebAssembly.instantiate(fs.readFileSync(wasmPath), {
    "./schema_engine_bg.js": glue,
  });
  glue.__wbg_set_wasm(instance.exports);
  instance.exports.__wbindgen_start();
  return glue.SchemaEngine;
}

function schemaFile(file) {
  return { path: path.resolve(file), content: fs.readFileSync(file, "utf8") };
}

function migrationsList(dir) {
  const base = path.resolve(dir);
  const dirs = fs.existsSync(base)
    ? fs.readdirSync(base, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort()
    : [];
  const lock = path.join(base, "migration_lock.toml");
  return {
    baseDir: base,
    lockfile: { path: "migration_lock.toml", content: fs.existsSync(lock) ? fs.readFileSync(lock, "utf8") : null },
    shadowDbInitScript: "",
    migrationDirectories: dirs.map((name) => {
      const file = path.join(base, name, "migration.sql");
      return {
        path: name,
        migrationFile: {
          path: "migration.sql",
          content: fs.existsSync(file)
            ? { tag: "ok", value: fs.readFileSync(file, "utf8") }
            : { tag: "error", value: "missing" },
        },
      };
    }),
  };
}

function target(t, args) {
  if (t === "empty") return { tag: "empty" };
  if (t.schema) return { tag: "schemaDatamodel", files: [schemaFile(t.schema)] };
  // The live database, reached through the adapter (`--from-config-datasource`).
  if (t.database) return { tag: "schemaDatasource", files: [schemaFile(args.schema)], configDir: process.cwd() };
  if (t.migrations) return { tag: "migrations", ...migrationsList(t.migrations) };
  throw new Error(`unknown diff target ${JSON.stringify(t)}`);
}

const filters = { externalTables: [], externalEnums: [] };

// `migrate dev` replays the migrations into a shadow database. adapter-pg 7.10 drops it
// while its own pool still holds a connection ("being accessed by other users"): this
// creates it, and ends the pool before dropping it.
function withShadowDatabase(factory, connection) {
  return {
    provider: factory.provider,
    adapterName: factory.adapterName,
    connect: () => factory.connect(),
    async connectToShadowDb() {
      const name = `prisma_migrate_shadow_db_${globalThis.crypto.randomUUID()}`;
      const admin = new pg.Client(connection);
      await admin.connect();
      await admin.query(`CREATE DATABASE "${name}"`);
      const shadowPool = new pg.Pool({ ...connection, database: name });
      const adapter = await new PrismaPg(shadowPool).connect();
      const dispose = adapter.dispose.bind(adapter);
      adapter.dispose = async () => {
        await dispose();
        await shadowPool.end();
        await admin.query(`DROP DATABASE IF EXISTS "${name}"`);
        await admin.end();
      };
      return adapter;
    },
  };
}

async function main() {
  const [command, rawArgs] = process.argv.slice(2);
  const args = JSON.parse(rawArgs ?? "{}");
  const SchemaEngine = await loadEngine();
  // Connection fields, not a connection string: adapter-pg makes the shadow database's
  // pool from this pool's options with another `database`, which a string would override.
  const u = new URL(args.url);
  const connection = {
    host: u.hostname,
    port: Number(u.port || 5432),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password) || undefined,
    database: decodeURIComponent(u.pathname.slice(1)),
    max: 2,
  };
  const pool = new pg.Pool(connection);
  const factory = bindMigrationAwareSqlAdapterFactory(withShadowDatabase(new PrismaPg(pool), connection));
  const logs = [];
  const datamodel = args.schema ? [[path.resolve(args.schema), fs.readFileSync(args.schema, "utf8")]] : undefined;
  const engine = await SchemaEngine.new({ datamodels: datamodel }, (log) => logs.push(log), factory);
  let out;
  switch (command) {
    case "diff":
      out = await engine.diff({
        from: target(args.from, args),
        to: target(args.to, args),
        script: Boolean(args.script),
        exitCode: true,
        filters,
      });
      break;
    case "devDiagnostic":
      out = await engine.devDiagnostic({ migrationsList: migrationsList(args.migrations), filters });
      break;
    case "deploy":
      out = await engine.applyMigrations({ migrationsList: migrationsList(args.migrations), filters });
      break;
    case "resolveApplied":
      out = await engine.markMigrationApplied({
        migrationName: args.name,
        migrationsList: migrationsList(args.migrations),
      });
      break;
    case "history":
      out = await engine.diagnoseMigrationHistory({
        migrationsList: migrationsList(args.migrations),
        optInToShadowDatabase: false,
        filters,
      });
      break;
    default:
      throw new Error(`unknown command ${command}`);
  }
  console.log(JSON.stringify(out ?? {}));
  engine.free();
  await pool.end();
}

main().catch((e) => {
  console.error(`prisma schema engine: ${e?.message ?? e}`);
  if (e?.stack) console.error(e.stack);
  process.exit(1);
});
