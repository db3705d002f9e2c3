import { Card, SimpleGrid } from "@chakra-ui/react";

import { Metric } from "../components/Metric";
import { duration, money, percent } from "../format";
import type { AttemptTotals } from "../types";

export function TotalsCard({ totals }: { totals: AttemptTotals }) {
  return (
    <Card.Root size="sm" variant="outline" data-testid="spot-totals">
      <Card.Header>
        <Card.Title>Totals</Card.Title>
      </Card.Header>
      <Card.Body>
        <SimpleGrid columns={{ base: 2, md: 4, xl: 7 }} gap={3}>
          <Metric label="Spend" value={money(totals.cost)} raw={totals.cost} testId="spot-total-cost" />
          <Metric
            label="On-demand equivalent"
            value={money(totals.on_demand_equivalent_cost)}
            raw={totals.on_demand_equivalent_cost}
            testId="spot-total-on-demand"
          />
          <Metric
            label="Savings"
            value={percent(totals.savings_pct)}
            raw={totals.savings_pct}
            testId="spot-total-savings"
          />
          <Metric
            label="Lost work"
            value={duration(totals.lost_work_seconds)}
            raw={totals.lost_work_seconds}
            help={`${totals.lost} lost attempt${totals.lost === 1 ? "" : "s"}`}
            testId="spot-total-lost-work"
          />
          <Metric
            label="Preemptions"
            value={String(totals.preemptions)}
            raw={totals.preemptions}
            testId="spot-total-preemptions"
          />
          <Metric
            label="Attempts"
            value={String(totals.attempts)}
            raw={totals.attempts}
            help={`${totals.user_failures} user failure${totals.user_failures === 1 ? "" : "s"}`}
            testId="spot-total-attempts"
          />
          <Metric
            label="Instance time"
            value={duration(totals.instance_seconds)}
            raw={totals.instance_seconds}
            testId="spot-total-instance-time"
          />
        </SimpleGrid>
      </Card.Body>
    </Card.Root>
  );
}
