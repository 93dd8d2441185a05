CREATE TABLE "github_outbox" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"repository" text NOT NULL,
	"sha" text NOT NULL,
	"context" text NOT NULL,
	"state" text NOT NULL,
	"description" text NOT NULL,
	"target_url" text,
	"deployment" text NOT NULL,
	"deploy_id" bigint,
	"result" text,
	"attempts" integer DEFAULT 0 NOT NULL,
	"last_error" text,
	"last_attempt_at" timestamp with time zone,
	"sent_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "github_sender" (
	"id" integer PRIMARY KEY NOT NULL,
	"owner" text NOT NULL,
	"lease_until" timestamp with time zone NOT NULL
);
--> statement-breakpoint
CREATE INDEX "github_outbox_key_idx" ON "github_outbox" USING btree ("repository","sha","context","id");--> statement-breakpoint
CREATE INDEX "github_outbox_unsent_idx" ON "github_outbox" USING btree ("id") WHERE "github_outbox"."result" is null;