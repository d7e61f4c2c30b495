/**
 * The client against a running clerk-sync (tests/api/typescript_client.rs runs it per
 * backend): a user signed up through a signed Clerk webhook, then consume, replay, 409,
 * grant, 402, and the whole ledger paged. Exits 1 at the first answer that is not the
 * expected one.
 *
 * Env: CLERK_SYNC_URL, CLERK_SYNC_API_KEY, CLERK_SYNC_SECRET (the webhook signing secret).
 */
import { createHmac, randomUUID } from "node:crypto";

import { consume, createClerkSyncClient, ledger } from "../src/index.js";

const url = required("CLERK_SYNC_URL");
const client = createClerkSyncClient(url, required("CLERK_SYNC_API_KEY"));
const secret = Buffer.from(required("CLERK_SYNC_SECRET").replace(/^whsec_/, ""), "base64");

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function check(ok: boolean, what: string, seen?: unknown): void {
  if (!ok) {
    console.error(`FAIL: ${what}`, seen === undefined ? "" : JSON.stringify(seen));
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

/** A Clerk `user.created`, signed as Svix signs it. */
async function signUp(clerkId: string): Promise<unknown> {
  const now = Math.floor(Date.now() / 1000);
  const body = JSON.stringify({
    type: "user.created",
    object: "event",
    data: {
      id: clerkId,
      object: "user",
      email_addresses: [
        { id: `idn_${clerkId}`, email_address: `${clerkId}@example.org`, verification: { status: "verified", strategy: "email_code" } },
      ],
      primary_email_address_id: `idn_${clerkId}`,
      first_name: "Type",
      last_name: "Script",
      image_url: "https://img.clerk.com/x",
      created_at: now * 1000,
      updated_at: now * 1000,
    },
  });
  const msgId = `msg_${randomUUID().replaceAll("-", "")}`;
  const signature = createHmac("sha256", secret).update(`${msgId}.${now}.${body}`).digest("base64");
  const response = await fetch(`${url}/api/webhooks/clerk`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "svix-id": msgId,
      "svix-timestamp": String(now),
      "svix-signature": `v1,${signature}`,
    },
    body,
  });
  return response.json();
}

const clerkId = `user_ts${randomUUID().replaceAll("-", "").slice(0, 16)}`;
const signedUp = (await signUp(clerkId)) as { status?: string; action?: string };
check(signedUp.status === "processed" && signedUp.action === "created", "signed up by a webhook", signedUp);

const user = await client.GET("/v1/users/{clerk_id}", { params: { path: { clerk_id: clerkId } } });
check(user.data?.balance === 20 && user.data.availableGenerations === 20, "20 free generations", user.data);
check(user.data?.createdAt.endsWith("Z") === true && !Number.isNaN(Date.parse(user.data.createdAt)), "createdAt is RFC 3339 UTC", user.data?.createdAt);

const spent = await consume(client, clerkId, 5, "order-1");
check(spent.kind === "spent" && spent.movement.balanceAfter === 15 && !spent.movement.replayed, "consume 5", spent);
const again = await consume(client, clerkId, 5, "order-1");
check(again.kind === "spent" && again.movement.replayed && again.movement.balanceAfter === 15, "the same key replays", again);

const conflict = await client.POST("/v1/users/{clerk_id}/credits/consume", {
  params: { path: { clerk_id: clerkId } },
  body: { amount: 6, idempotencyKey: "order-1" },
});
check(conflict.response.status === 409 && conflict.error?.error === "idempotency_conflict", "the same key for another amount: 409", conflict.error);

const granted = await client.POST("/v1/users/{clerk_id}/credits/grant", {
  params: { path: { clerk_id: clerkId } },
  body: { amount: 10, kind: "purchase", idempotencyKey: "stripe-pi_1", reference: "pi_1" },
});
check(granted.data?.balanceAfter === 25 && granted.data.reason === "purchase", "grant 10 (purchase)", granted.data);

const tooMuch = await consume(client, clerkId, 100, "order-2");
check(tooMuch.kind === "insufficient" && tooMuch.balance === 25, "402: not enough credits, with the balance", tooMuch);

for (let i = 0; i < 20; i++) {
  const g = await client.POST("/v1/users/{clerk_id}/credits/grant", {
    params: { path: { clerk_id: clerkId } },
    body: { amount: 1, kind: "grant", idempotencyKey: `bonus-${i}` },
  });
  check(g.response.status === 200, `grant ${i + 1} of 20`);
}

const rows = [];
for await (const row of ledger(client, clerkId, 5)) rows.push(row);
const ids = new Set(rows.map((r) => r.id));
const total = rows.reduce((sum, r) => sum + (r.type === "credit" ? r.amount ?? 0 : -(r.amount ?? 0)), 0);
check(rows.length === 23 && ids.size === 23, "the ledger, 5 per page: 23 rows, each once", rows.length);
check(total === 45 && rows[0]?.balanceAfter === 45, "the ledger adds up to the balance (45)", { total, first: rows[0] });

const missing = await client.GET("/v1/users/{clerk_id}", { params: { path: { clerk_id: "user_nobody" } } });
check(missing.response.status === 404 && missing.error?.error === "user_not_found", "an unknown user: 404", missing.error);
console.log("e2e: all answers as expected");
