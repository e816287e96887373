// Node `pg` through the Portcullis PostgreSQL gateway: the token as the password over TLS
// verified against the test CA, a parameterised query, a masked column, and a denied statement
// with its SQLSTATE. Run by appliance/tests/postgres_clients.rs with PGC_TLS_PORT, PGC_TOKEN and
// PGC_CA set; exits non-zero on the first failed check and prints `ok:` lines.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import pg from "pg";

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
}

const client = new pg.Client({
  host: "127.0.0.1",
  port: Number(env("PGC_TLS_PORT")),
  database: "orders",
  user: "alice",
  password: env("PGC_TOKEN"),
  ssl: { ca: readFileSync(env("PGC_CA"), "utf8"), servername: "localhost", rejectUnauthorized: true },
  connectionTimeoutMillis: 60000,
});

await client.connect();
assert.ok(client.connection.stream.encrypted, "connection not encrypted");
console.log("ok: connected over tls");

const r = await client.query("SELECT id, name, email, card FROM customers WHERE id = $1", [1]);
assert.equal(r.rows.length, 1);
assert.equal(r.rows[0].id, 1);
assert.equal(r.rows[0].name, "Ann");
assert.notEqual(r.rows[0].email, "ann@example.com", "email not masked");
assert.ok(!r.rows[0].card.includes("4111 1111 1111 1111"), "card not masked");
assert.ok(r.rows[0].card.endsWith("1111"), r.rows[0].card);
console.log(`ok: parameterised query masked: ${JSON.stringify(r.rows[0])}`);

// A named prepared statement, executed twice (Parse once, then Bind/Execute).
for (const id of [1, 2, 1]) {
  const p = await client.query({ name: "by-id", text: "SELECT id, email FROM customers WHERE id = $1", values: [id] });
  assert.equal(p.rows[0].id, id);
  assert.ok(p.rows[0].email === null || p.rows[0].email !== "ann@example.com", JSON.stringify(p.rows));
}
console.log("ok: named prepared statement reused");

for (const sql of ["DROP TABLE customers", "TRUNCATE customers"]) {
  try {
    await client.query(sql);
    assert.fail(`${sql} succeeded`);
  } catch (e) {
    assert.equal(e.code, "42501", `${sql}: ${e.message}`);
    assert.match(e.message, /no-drop/);
    console.log(`ok: denied ${sql.split(" ")[0]} with ${e.code}: ${e.message}`);
  }
}

// A denied statement inside a transaction aborts it, as a server error would.
await client.query("BEGIN");
await client.query("SELECT 1");
await assert.rejects(client.query("DROP TABLE customers"), (e) => e.code === "42501");
await assert.rejects(client.query("SELECT 1"), (e) => e.code === "25P02");
await client.query("ROLLBACK");
const c = await client.query("SELECT count(*)::int AS n FROM customers");
assert.equal(c.rows[0].n, 2);
console.log("ok: session usable after denials, table intact");

await client.end();
console.log("done");
