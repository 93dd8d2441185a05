CREATE TABLE "notify_state" (
	"deployment" text PRIMARY KEY NOT NULL,
	"failing" boolean NOT NULL,
	"failing_since" timestamp with time zone,
	"failures" integer DEFAULT 0 NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
