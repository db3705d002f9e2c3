import { bytes, plural } from "../format";
import type { BackupSave } from "../types";

export type BackupOutcome = "uploaded" | "skipped" | "failed";

export function backupOutcome(save: BackupSave): BackupOutcome {
  if (save.error) return "failed";
  return save.skipped ? "skipped" : "uploaded";
}

// One line describing what the last-moment save did after a preemption notice.
export function backupSummary(save: BackupSave): string {
  switch (backupOutcome(save)) {
    case "failed":
      return `failed: ${save.error}`;
    case "skipped":
      return save.reason ? `skipped: ${save.reason}` : "skipped";
    default:
      return `uploaded ${plural(save.uploaded.length, "file")} (${bytes(save.bytes)})${save.latest ? ` → ${save.latest}` : ""}`;
  }
}
