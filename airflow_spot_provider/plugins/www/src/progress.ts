// One line for a job's last progress report, e.g. "step 4000 · epoch 40 · loss 0.0123 · accuracy 0.91".
// A report is {step, epoch, metrics: {name: number}, time} (the script's report_progress); `time` (epoch
// seconds) and anything that is not a finite number are left out.

import type { Progress } from "./types";

// Beyond these, the rest of the metrics are only in the tooltip.
const SHOWN_METRICS = 3;
const NOT_METRICS = new Set(["step", "epoch", "time", "metrics"]);

const isNumber = (value: unknown): value is number => typeof value === "number" && Number.isFinite(value);

// Four significant digits, without trailing zeros: 0.012345 -> "0.01235", 1234.5 -> "1235".
export function metricValue(value: number): string {
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
}

// The scalar metrics: those nested under `metrics`, then numbers other reporters put at the top level.
function metricsOf(progress: Progress): [string, number][] {
  const nested = progress.metrics;
  const fromMetrics = typeof nested === "object" && nested !== null && !Array.isArray(nested) ? nested : {};
  const topLevel = Object.entries(progress).filter(([key]) => !NOT_METRICS.has(key));
  return [...Object.entries(fromMetrics), ...topLevel].filter((entry): entry is [string, number] =>
    isNumber(entry[1]),
  );
}

function parts(progress: Progress | null | undefined, metrics: number): string[] {
  if (progress === null || progress === undefined) return [];
  const counters = (["step", "epoch"] as const).flatMap((key) => {
    const value = progress[key];
    return isNumber(value) ? [`${key} ${value}`] : [];
  });
  const scalars = metricsOf(progress).map(([name, value]) => `${name} ${metricValue(value)}`);
  return [...counters, ...scalars.slice(0, metrics)];
}

export function progressText(progress: Progress | null | undefined): string {
  return parts(progress, SHOWN_METRICS).join(" · ");
}

// Every counter and metric, one a line: the tooltip of the short text.
export function progressDetail(progress: Progress | null | undefined): string {
  return parts(progress, Number.POSITIVE_INFINITY).join("\n");
}
