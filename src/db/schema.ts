import { bigserial, index, integer, jsonb, pgTable, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";

/**
 * Every delivery the receiver accepted (or a post-receive hook / admin enqueued), and what
 * became of it. (hook_id, delivery_id) is the dedupe key: GitHub keeps the delivery ID on a
 * redelivery, and one event can reach two hooks with the same delivery ID.
 */
export const deliveries = pgTable(
  "deliveries",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    /** X-GitHub-Hook-ID; "" when the sender has none (a post-receive hook, a planted file). */
    hookId: text("hook_id").notNull(),
    deliveryId: text("delivery_id").notNull(),
    event: text("event").notNull(),
    repository: text("repository"),
    ref: text("ref"),
    afterSha: text("after_sha"),
    receivedAt: timestamp("received_at", { withTimezone: true }).notNull().defaultNow(),
    /** The queue entry's file name (the same name in every queue it passes through). */
    entry: text("entry"),
    /** queued | ping | routed | voided | dead-letter */
    outcome: text("outcome").notNull(),
    /** Why it was voided or dead-lettered. */
    reason: text("reason"),
    /** The deployments it was handed to. */
    routedTo: jsonb("routed_to").$type<string[]>(),
    /** How many redeliveries of it were answered "duplicate". */
    duplicates: integer("duplicates").notNull().default(0),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex("deliveries_hook_delivery_key").on(t.hookId, t.deliveryId),
    index("deliveries_received_at_idx").on(t.receivedAt),
  ],
);

export type Delivery = typeof deliveries.$inferSelect;
export type DeliveryOutcome = "queued" | "ping" | "routed" | "voided" | "dead-letter";
