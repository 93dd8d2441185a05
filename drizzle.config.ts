import { defineConfig } from "drizzle-kit";

// `npm run db:generate` writes a new migration into migrations/ after a schema change;
// commit it. Migrations are applied by `deployq migrate` and at every start.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/db/schema.ts",
  out: "./migrations",
});
