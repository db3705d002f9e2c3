import { Page } from "../components/Page";
import { JobsSection } from "./JobsSection";
import { StatsSection } from "./StatsSection";

export function SpotTraining() {
  return (
    <Page title="Spot training" gap={6} data-testid="spot-training">
      <JobsSection />
      <StatsSection />
    </Page>
  );
}
