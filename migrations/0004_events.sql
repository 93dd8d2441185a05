CREATE TABLE "deploy_steps" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"deploy_id" bigint NOT NULL,
	"position" integer NOT NULL,
	"kind" text NOT NULL,
	"title" text NOT NULL,
	"started_at" timestamp with time zone NOT NULL,
	"finished_at" timestamp with time zone NOT NULL,
	"duration_ms" integer NOT NULL,
	"ok" boolean NOT NULL,
	"exit_code" integer
);
--> statement-breakpoint
CREATE TABLE "events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"kind" text NOT NULL,
	"name" text NOT NULL,
	"deployment" text,
	"data" jsonb NOT NULL
);
--> statement-breakpoint
ALTER TABLE "deploy_steps" ADD CONSTRAINT "deploy_steps_deploy_id_deploys_id_fk" FOREIGN KEY ("deploy_id") REFERENCES "public"."deploys"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "deploy_steps_deploy_position_key" ON "deploy_steps" USING btree ("deploy_id","position");--> statement-breakpoint
CREATE INDEX "events_deployment_id_idx" ON "events" USING btree ("deployment","id");