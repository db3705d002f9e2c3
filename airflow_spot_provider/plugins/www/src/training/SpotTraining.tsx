import { Heading, Stack } from "@chakra-ui/react";

import { JobsSection } from "./JobsSection";
import { StatsSection } from "./StatsSection";

export function SpotTraining() {
  return (
    <Stack gap={6} p={2} data-testid="spot-training">
      <Heading size="lg">Spot training</Heading>
      <JobsSection />
      <StatsSection />
    </Stack>
  );
}
