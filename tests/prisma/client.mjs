// The app's side: the Prisma client (generated from the app's schema.prisma by the pinned
// `prisma generate`) on a database clerk-sync serves, doing what the seed app did.
//
//   node client.mjs <command> <json-args>
//
//   spend  {url, client, clerkId, times}  spends `times` generations one by one with
//          `usedGenerations: { increment: 1 }`, then records a purchase of 5 as the app
//          would: its own ledger row, then the column, in one transaction
//   checks {url, client, clerkId}          reads the user and an event's Json payload,
//          and tries a second user with the same email (P2002 expected)
// Prints one JSON document.

import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const { PrismaPg } = require("@prisma/adapter-pg");

async function main() {
  const [command, rawArgs] = process.argv.slice(2);
  const args = JSON.parse(rawArgs);
  const { PrismaClient } = require(path.resolve(args.client));
  const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: args.url }) });
  try {
    let out;
    if (command === "spend") {
      for (let i = 0; i < args.times; i++) {
        await prisma.user.update({
          where: { clerkId: args.clerkId },
          data: { usedGenerations: { increment: 1 } },
        });
      }
      const user = await prisma.user.findUniqueOrThrow({ where: { clerkId: args.clerkId } });
      await prisma.$transaction([
        prisma.transaction.create({
          data: {
            tracking_id: "pi_app_purchase",
            userId: user.id,
            status: "completed",
            amount: 5,
            type: "credit",
            reason: "purchase",
          },
        }),
        prisma.user.update({
          where: { clerkId: args.clerkId },
          data: { availableGenerations: { increment: 5 } },
        }),
      ]);
      const after = await prisma.user.findUniqueOrThrow({ where: { clerkId: args.clerkId } });
      out = { usedGenerations: after.usedGenerations, availableGenerations: after.availableGenerations };
    } else if (command === "checks") {
      const user = await prisma.user.findUniqueOrThrow({ where: { clerkId: args.clerkId } });
      const event = await prisma.webhookEvent.findFirst({ where: { clerkId: args.clerkId } });
      let duplicate = null;
      try {
        await prisma.user.create({
          data: { clerkId: "user_prisma_duplicate", email: user.email, photo: "" },
        });
      } catch (e) {
        duplicate = e.code ?? String(e);
      }
      out = {
        email: user.email,
        updatedAtIsDate: user.updatedAt instanceof Date,
        payloadType: event?.payload?.type ?? null,
        eventStatus: event?.status ?? null,
        duplicate,
      };
    } else {
      throw new Error(`unknown command ${command}`);
    }
    console.log(JSON.stringify(out));
  } finally {
    await prisma.$disconnect();
  }
}

main().catch((e) => {
  console.error(`prisma client: ${e?.message ?? e}`);
  process.exit(1);
});
