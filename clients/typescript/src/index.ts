/**
 * A typed client for clerk-sync's credits API, for a Next.js app's server code. The types
 * come from clerk-sync's OpenAPI document (`npm run generate` writes src/schema.d.ts);
 * requests go through openapi-fetch, so every path, body and answer is checked by tsc.
 *
 * Keep the key on the server: CLERK_SYNC_API_KEYS of the service, never sent to a browser.
 */
import createClient, { type Middleware } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";
export type User = components["schemas"]["UserCredits"];
export type Movement = components["schemas"]["Movement"];
export type LedgerEntry = components["schemas"]["LedgerEntry"];
export type ErrorBody = components["schemas"]["ErrorBody"];
export type GrantKind = components["schemas"]["GrantReason"];

/** The raw openapi-fetch client, typed by the document. */
export function createClerkSyncClient(baseUrl: string, apiKey: string) {
  const client = createClient<paths>({ baseUrl });
  const auth: Middleware = {
    onRequest({ request }) {
      request.headers.set("Authorization", `Bearer ${apiKey}`);
      return request;
    },
  };
  client.use(auth);
  return client;
}

export type ClerkSyncClient = ReturnType<typeof createClerkSyncClient>;

/** What spending can come to: spent (or the first result of this key), or not enough. */
export type ConsumeResult =
  | { kind: "spent"; movement: Movement }
  | { kind: "insufficient"; balance: number };

/** A failure the caller cannot act on in the flow: shown, logged, retried later. */
export class ClerkSyncError extends Error {
  constructor(
    readonly status: number,
    readonly body: ErrorBody | undefined,
  ) {
    super(body ? `${status} ${body.error}: ${body.message}` : `HTTP ${status}`);
  }
}

/**
 * Spend `amount` generations. `idempotencyKey` makes a retry safe: the same key returns
 * the first result (`replayed: true`). Not enough credits is a result, not an error.
 */
export async function consume(
  client: ClerkSyncClient,
  clerkUserId: string,
  amount: number,
  idempotencyKey: string,
): Promise<ConsumeResult> {
  const { data, error, response } = await client.POST(
    "/v1/users/{clerk_id}/credits/consume",
    {
      params: { path: { clerk_id: clerkUserId } },
      body: { amount, idempotencyKey },
    },
  );
  if (data) return { kind: "spent", movement: data };
  if (response.status === 402 && error?.balance != null) {
    return { kind: "insufficient", balance: error.balance };
  }
  throw new ClerkSyncError(response.status, error);
}

/** Every ledger row of a user, newest first, page by page. */
export async function* ledger(
  client: ClerkSyncClient,
  clerkUserId: string,
  limit = 50,
): AsyncGenerator<LedgerEntry> {
  let cursor: string | undefined;
  do {
    const { data, error, response } = await client.GET("/v1/users/{clerk_id}/ledger", {
      params: {
        path: { clerk_id: clerkUserId },
        query: cursor === undefined ? { limit } : { limit, cursor },
      },
    });
    if (!data) throw new ClerkSyncError(response.status, error);
    yield* data.items;
    cursor = data.nextCursor ?? undefined;
  } while (cursor !== undefined);
}
