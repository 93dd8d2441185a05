CREATE TABLE "github_deployments" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"deployment" text NOT NULL,
	"entry" text NOT NULL,
	"sha" text NOT NULL,
	"repository" text NOT NULL,
	"environment" text NOT NULL,
	"deploy_id" bigint,
	"github_id" bigint,
	"live" boolean DEFAULT false NOT NULL
);
--> statement-breakpoint
DROP INDEX "github_outbox_key_idx";--> statement-breakpoint
ALTER TABLE "github_outbox" ADD COLUMN "kind" text DEFAULT 'status' NOT NULL;--> statement-breakpoint
ALTER TABLE "github_outbox" ADD COLUMN "key" text;--> statement-breakpoint
-- Edited by hand: the rows already there are commit statuses, keyed as src/github/outbox.ts statusKey() keys them.
UPDATE "github_outbox" SET "key" = 'status:' || "repository" || '@' || "sha" || ':' || "context";--> statement-breakpoint
ALTER TABLE "github_outbox" ALTER COLUMN "key" SET NOT NULL;--> statement-breakpoint
ALTER TABLE "github_outbox" ADD COLUMN "collapsible" boolean DEFAULT true NOT NULL;--> statement-breakpoint
ALTER TABLE "github_outbox" ADD COLUMN "payload" jsonb;--> statement-breakpoint
CREATE UNIQUE INDEX "github_deployments_key" ON "github_deployments" USING btree ("deployment","entry","sha");--> statement-breakpoint
CREATE INDEX "github_deployments_live_idx" ON "github_deployments" USING btree ("repository","environment") WHERE "github_deployments"."live";--> statement-breakpoint
CREATE INDEX "github_outbox_key_idx" ON "github_outbox" USING btree ("key","id");