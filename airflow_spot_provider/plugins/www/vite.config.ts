/*
 * Builds one UMD bundle per React plugin app. Vite's library mode takes a single entry for UMD, so
 * `npm run build` runs `vite build --mode <app>` once per app into the same output folder.
 */
import { fileURLToPath } from "node:url";

import { defineConfig } from "vite";

type App = { entry: string; fileName: string; appName: string };

// appName is the react app's name in the Airflow plugin (spot_plugin.py), also the label the UI shows. The
// bundle assigns its component to globalThis[appName], the first place the Airflow UI looks. It does not set
// globalThis.AirflowPlugin: the UI clears that before each plugin load and reads it when the load ends, so two
// loads in flight at once (this app's and another's) would hand one of them the other's component.
const APPS: Record<string, App> = {
  attempts: { entry: "src/attempts/main.tsx", fileName: "spot-attempts.js", appName: "Spot attempts" },
  training: { entry: "src/training/main.tsx", fileName: "spot-training.js", appName: "Spot training" },
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
        name: app.appName,
        fileName: () => app.fileName,
      },
      rollupOptions: {
        external: Object.keys(HOST_GLOBALS),
        output: {
          exports: "default",
          globals: HOST_GLOBALS,
        },
      },
    },
  };
});
