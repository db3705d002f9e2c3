/*
 * Builds one UMD bundle per React plugin app. Vite's library mode takes a single entry for UMD, so
 * `npm run build` runs `vite build --mode <app>` once per app into the same output folder.
 */
import { fileURLToPath } from "node:url";

import { defineConfig } from "vite";

type App = { entry: string; fileName: string; globalName: string };

// globalName is the global the bundle assigns; the Airflow plugin registers each app under that name.
const APPS: Record<string, App> = {
  attempts: { entry: "src/attempts/main.tsx", fileName: "spot-attempts.js", globalName: "SpotAttempts" },
  training: { entry: "src/training/main.tsx", fileName: "spot-training.js", globalName: "SpotTraining" },
};
const FIRST_APP = "attempts";

// Libraries the Airflow UI puts on globalThis for plugins: use the host's copies (one React, one Chakra
// context, the host's theme and colour mode) instead of bundling our own.
const HOST_GLOBALS: Record<string, string> = {
  react: "React",
  "react-dom": "ReactDOM",
  "react/jsx-runtime": "ReactJSXRuntime",
  "react-router-dom": "ReactRouterDOM",
  "@chakra-ui/react": "ChakraUI",
  "@emotion/react": "EmotionReact",
};

export default defineConfig(({ mode }) => {
  const app = APPS[mode];
  if (app === undefined) {
    throw new Error(`unknown app "${mode}": build with --mode ${Object.keys(APPS).join("|")}`);
  }
  return {
    root: fileURLToPath(new URL(".", import.meta.url)),
    publicDir: false,
    esbuild: { jsx: "automatic", legalComments: "none" },
    build: {
      // SPOT_UI_OUT_DIR lets the bundle check build elsewhere and compare with the committed files.
      outDir: process.env.SPOT_UI_OUT_DIR ?? "dist",
      // The first app's build clears stale files; the second one adds its bundle next to it.
      emptyOutDir: mode === FIRST_APP,
      reportCompressedSize: false,
      sourcemap: false,
      target: "es2022",
      lib: {
        entry: app.entry,
        formats: ["umd"],
        name: app.globalName,
        fileName: () => app.fileName,
      },
      rollupOptions: {
        external: Object.keys(HOST_GLOBALS),
        output: {
          exports: "default",
          globals: HOST_GLOBALS,
          // Hosts that only look at the generic global still find the component.
          footer: `globalThis.AirflowPlugin=globalThis.${app.globalName};`,
        },
      },
    },
  };
});
