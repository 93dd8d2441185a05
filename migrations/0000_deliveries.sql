CREATE TABLE "deliveries" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"hook_id" text NOT NULL,
	"delivery_id" text NOT NULL,
	"event" text NOT NULL,
	"repository" text,
	"ref" text,
	"after_sha" text,
	"received_at" timestamp with time zone DEFAULT now() NOT NULL,
	"entry" text,
	"outcome" text NOT NULL,
	"reason" text,
	"routed_to" jsonb,
	"duplicates" integer DEFAULT 0 NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "deliveries_hook_delivery_key" ON "deliveries" USING btree ("hook_id","delivery_id");--> statement-breakpoint
CREATE INDEX "deliveries_received_at_idx" ON "deliveries" USING btree ("received_at");