CREATE TABLE "admin_actions" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	"origin" text NOT NULL,
	"action" text NOT NULL,
	"deployment" text,
	"details" jsonb NOT NULL,
	"ok" boolean NOT NULL,
	"message" text NOT NULL,
	"client" text
);
--> statement-breakpoint
CREATE INDEX "admin_actions_deployment_id_idx" ON "admin_actions" USING btree ("deployment","id");