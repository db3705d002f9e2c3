import { Badge } from "@chakra-ui/react";

import type { AttemptStatus } from "../types";

// Chakra's default palettes: their semantic tokens follow the host's light/dark mode.
const PALETTE: Record<AttemptStatus, string> = {
  launching: "cyan",
  running: "blue",
  succeeded: "green",
  failed: "red",
  preempted: "orange",
  lost: "purple",
  cancelled: "gray",
};

export const statusPalette = (status: string): string => PALETTE[status as AttemptStatus] ?? "gray";

export function StatusBadge({ status, testId }: { status: string; testId?: string }) {
  return (
    <Badge colorPalette={statusPalette(status)} variant="subtle" data-testid={testId} data-status={status}>
      {status}
    </Badge>
  );
}
