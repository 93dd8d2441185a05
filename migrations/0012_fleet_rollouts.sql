CREATE TABLE "fleet_hosts" (
	"host" text PRIMARY KEY NOT NULL,
	"pid" integer NOT NULL,
	"last_seen" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "rollout_hosts" (
	"rollout_id" bigint NOT NULL,
	"host" text NOT NULL,
	"state" text NOT NULL,
	"deploy_id" bigint,
	"release" text,
	"previous_release" text,
	"step" text,
	"error" text,
	"handed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"switch_started_at" timestamp with time zone,
	"switch_ended_at" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "rollouts" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"deployment" text NOT NULL,
	"entry" text NOT NULL,
	"delivery_id" text,
	"ref" text,
	"sha" text,
	"hosts" jsonb NOT NULL,
	"parallel" integer NOT NULL,
	"canary" text,
	"on_failure" text NOT NULL,
	"state" text DEFAULT 'running' NOT NULL,
	"superseded_by" bigint,
	"failed_host" text,
	"failed_step" text,
	"reason" text,
	"body" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"finished_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "rollout_hosts" ADD CONSTRAINT "rollout_hosts_rollout_id_rollouts_id_fk" FOREIGN KEY ("rollout_id") REFERENCES "public"."rollouts"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "rollout_hosts_rollout_host_key" ON "rollout_hosts" USING btree ("rollout_id","host");--> statement-breakpoint
CREATE UNIQUE INDEX "rollouts_deployment_entry_key" ON "rollouts" USING btree ("deployment","entry");--> statement-breakpoint
CREATE INDEX "rollouts_deployment_id_idx" ON "rollouts" USING btree ("deployment","id");