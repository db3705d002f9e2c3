import { money, percent } from "../format";
import { Metric } from "./Metric";

export type Spend = { cost: number; on_demand_equivalent_cost: number; savings_pct: number | null };

// Spend, its on-demand equivalent and the savings: the figures a task's totals and the statistics share.
// The test ids are `${testIdPrefix}-cost`, `-on-demand` and `-savings`.
export function SpendMetrics({ spend, testIdPrefix }: { spend: Spend; testIdPrefix: string }) {
  return (
    <>
      <Metric label="Spend" value={money(spend.cost)} raw={spend.cost} testId={`${testIdPrefix}-cost`} />
      <Metric
        label="On-demand equivalent"
        value={money(spend.on_demand_equivalent_cost)}
        raw={spend.on_demand_equivalent_cost}
        testId={`${testIdPrefix}-on-demand`}
      />
      <Metric
        label="Savings"
        value={percent(spend.savings_pct)}
        raw={spend.savings_pct}
        testId={`${testIdPrefix}-savings`}
      />
    </>
  );
}
