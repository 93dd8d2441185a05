CREATE TABLE "github_hook_cursors" (
	"hook_id" bigint PRIMARY KEY NOT NULL,
	"repository" text NOT NULL,
	"last_delivery_id" bigint NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "github_leases" (
	"name" text PRIMARY KEY NOT NULL,
	"owner" text NOT NULL,
	"lease_until" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE TABLE "github_redeliveries" (
	"hook_id" bigint NOT NULL,
	"guid" text NOT NULL,
	"repository" text NOT NULL,
	"event" text NOT NULL,
	"delivery_id" bigint NOT NULL,
	"seen_up_to" bigint NOT NULL,
	"requests" integer DEFAULT 1 NOT NULL,
	"requested_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX "github_redeliveries_hook_guid_key" ON "github_redeliveries" USING btree ("hook_id","guid");