CREATE TABLE "deploys" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"deployment" text NOT NULL,
	"entry" text NOT NULL,
	"delivery_id" text,
	"event" text NOT NULL,
	"ref" text,
	"sha" text,
	"status" text NOT NULL,
	"attempt" integer DEFAULT 1 NOT NULL,
	"host" text NOT NULL,
	"pid" integer NOT NULL,
	"started_at" timestamp with time zone DEFAULT now() NOT NULL,
	"finished_at" timestamp with time zone,
	"duration_ms" integer,
	"release" text,
	"previous_release" text,
	"log_path" text,
	"error" text,
	"exit_code" integer,
	"signal" text,
	"superseded_by" text
);
--> statement-breakpoint
CREATE INDEX "deploys_deployment_started_idx" ON "deploys" USING btree ("deployment","started_at");--> statement-breakpoint
CREATE INDEX "deploys_status_idx" ON "deploys" USING btree ("status");