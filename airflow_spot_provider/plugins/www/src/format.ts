// Display formats shared by both apps. Amounts under one dollar keep four decimals: short spot runs cost cents.

const DASH = "—";

export function money(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  const digits = Math.abs(value) >= 1 || value === 0 ? 2 : 4;
  return `${value < 0 ? "-" : ""}$${Math.abs(value).toFixed(digits)}`;
}

export function pricePerHour(value: number | null | undefined): string {
  return value === null || value === undefined ? DASH : `${money(value)}/h`;
}

export function percent(value: number | null | undefined): string {
  return value === null || value === undefined || !Number.isFinite(value) ? DASH : `${value.toFixed(1)}%`;
}

export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  const total = Math.max(0, Math.round(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

export function hours(value: number): string {
  return value.toFixed(2);
}

export function bytes(value: number): string {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
}

// Times are shown in UTC, like the API's ISO timestamps.
export function epochTime(epoch: number | null | undefined): string {
  if (epoch === null || epoch === undefined) return DASH;
  return new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function isoTime(iso: string | null | undefined): string {
  if (iso === null || iso === undefined || iso === "") return DASH;
  const parsed = Date.parse(iso);
  return Number.isNaN(parsed) ? iso : epochTime(parsed / 1000);
}

// "1 file", "3 files".
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

export { DASH };
