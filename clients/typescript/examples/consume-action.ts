/**
 * A Next.js server action that spends one generation before doing the work, and tells the
 * user when they have none left. In the app: `"use server"` at the top of app/actions.ts,
 * the Clerk user id from `auth()` (@clerk/nextjs/server), and the request id from the form
 * so that a double submit spends once.
 */
"use server";

import { ClerkSyncError, consume, createClerkSyncClient } from "../src/index.js";

const clerkSync = createClerkSyncClient(
  process.env.CLERK_SYNC_URL ?? "http://127.0.0.1:3000",
  process.env.CLERK_SYNC_API_KEY ?? "",
);

export type GenerateState =
  | { ok: true; balanceAfter: number }
  | { ok: false; message: string };

export async function generateImage(
  clerkUserId: string,
  requestId: string,
): Promise<GenerateState> {
  try {
    const result = await consume(clerkSync, clerkUserId, 1, `generate:${requestId}`);
    if (result.kind === "insufficient") {
      return {
        ok: false,
        message: `You have ${result.balance} generations left. Buy more to continue.`,
      };
    }
    // ... run the generation here ...
    return { ok: true, balanceAfter: result.movement.balanceAfter };
  } catch (e) {
    if (e instanceof ClerkSyncError && e.status === 503) {
      return { ok: false, message: "Busy right now; try again in a moment." };
    }
    throw e;
  }
}
