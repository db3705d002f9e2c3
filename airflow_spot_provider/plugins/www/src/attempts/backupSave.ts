import { bytes } from "../format";
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
    default: {
      const files = `${save.uploaded.length} file${save.uploaded.length === 1 ? "" : "s"}`;
      return `uploaded ${files} (${bytes(save.bytes)})${save.latest ? ` → ${save.latest}` : ""}`;
    }
  }
}
