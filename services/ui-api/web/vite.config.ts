import { svelte } from "@sveltejs/vite-plugin-svelte";
import { defineConfig } from "vitest/config";

declare const process: { env: Record<string, string | undefined> };

// Built into ui-api's package (services/ui-api/llmgw_ui_api/static, gitignored), which serves it at /.
// `npm run dev` proxies the API to a running ui-api (LLMGW_UI_URL, default http://127.0.0.1:8081).
const api = process.env.LLMGW_UI_URL ?? "http://127.0.0.1:8081";

export default defineConfig({
  plugins: [svelte()],
  base: "/",
  build: {
    outDir: "../llmgw_ui_api/static",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    target: "es2022",
  },
  server: {
    proxy: { "/api": { target: api, changeOrigin: false } },
  },
  test: {
    include: ["tests/**/*.test.ts"],
    environment: "node",
  },
});
