import { SimpleGrid } from "@chakra-ui/react";

import { Metric } from "../components/Metric";
import { SectionCard } from "../components/SectionCard";
import { SpendMetrics } from "../components/SpendMetrics";
import { duration, plural } from "../format";
import type { AttemptTotals } from "../types";

export function TotalsCard({ totals }: { totals: AttemptTotals }) {
  return (
    <SectionCard title="Totals" testId="spot-totals" size="sm">
      <SimpleGrid columns={{ base: 2, md: 4, xl: 7 }} gap={3}>
        <SpendMetrics spend={totals} testIdPrefix="spot-total" />
        <Metric
          label="Lost work"
          value={duration(totals.lost_work_seconds)}
          raw={totals.lost_work_seconds}
          help={plural(totals.lost, "lost attempt")}
          testId="spot-total-lost-work"
        />
        <Metric label="Preemptions" value={totals.preemptions} testId="spot-total-preemptions" />
        <Metric
          label="Attempts"
          value={totals.attempts}
          help={plural(totals.user_failures, "user failure")}
          testId="spot-total-attempts"
        />
        <Metric
          label="Instance time"
          value={duration(totals.instance_seconds)}
          raw={totals.instance_seconds}
          testId="spot-total-instance-time"
        />
      </SimpleGrid>
    </SectionCard>
  );
}
