import { Button, ButtonGroup, SimpleGrid, Stack, Table, Text } from "@chakra-ui/react";
import { useState } from "react";

import { apiUrl } from "../api";
import { DataTable } from "../components/DataTable";
import { ErrorState } from "../components/ErrorState";
import { Loading } from "../components/Loading";
import { SectionCard } from "../components/SectionCard";
import { SpendMetrics } from "../components/SpendMetrics";
import { duration, hours } from "../format";
import type { Placement, StatsResponse } from "../types";
import { useApi } from "../useApi";

const WINDOWS_DAYS = [7, 30] as const;
type WindowDays = (typeof WINDOWS_DAYS)[number];
const DAY_MS = 24 * 3600 * 1000;

// The window's start is fixed when it is chosen, so re-renders do not change the request URL.
const since = (days: WindowDays) => ({ days, iso: new Date(Date.now() - days * DAY_MS).toISOString() });

const COLUMNS = [
  "Backend",
  "Instance type",
  "Zone",
  "Attempts",
  "Preemptions",
  "Attempt hours",
  "Preemptions / attempt-hour",
  "Mean time to preemption",
];

const placementKey = (placement: Placement) => `${placement.backend}/${placement.instance_type}/${placement.zone}`;

function PlacementRow({ placement }: { placement: Placement }) {
  return (
    <Table.Row data-testid="spot-stats-row" data-key={placementKey(placement)}>
      <Table.Cell>{placement.backend}</Table.Cell>
      <Table.Cell>{placement.instance_type}</Table.Cell>
      <Table.Cell>{placement.zone}</Table.Cell>
      <Table.Cell>{placement.attempts}</Table.Cell>
      <Table.Cell data-testid="spot-stats-preemptions">{placement.preemptions}</Table.Cell>
      <Table.Cell>{hours(placement.attempt_hours)}</Table.Cell>
      <Table.Cell data-testid="spot-stats-rate" data-value={placement.preemptions_per_attempt_hour}>
        {placement.preemptions_per_attempt_hour.toFixed(3)}
      </Table.Cell>
      <Table.Cell>{duration(placement.mean_seconds_to_preemption)}</Table.Cell>
    </Table.Row>
  );
}

export function StatsSection() {
  const [range, setRange] = useState(() => since(30));
  const { data, error, loading } = useApi<StatsResponse>(apiUrl("stats", { since: range.iso }));
  const windowPicker = (
    <ButtonGroup size="xs" variant="outline" attached>
      {WINDOWS_DAYS.map((days) => (
        <Button
          key={days}
          variant={range.days === days ? "solid" : "outline"}
          onClick={() => setRange(since(days))}
          data-testid={`spot-stats-window-${days}`}
        >
          {`Last ${days} days`}
        </Button>
      ))}
    </ButtonGroup>
  );

  return (
    <SectionCard title="Placements and spend" testId="spot-stats" actions={windowPicker} data-window-days={range.days}>
      {error === null ? null : <ErrorState error={error} />}
      {loading && data === null ? <Loading what="statistics" /> : null}
      {data === null ? null : (
        <Stack gap={4}>
          <SimpleGrid columns={{ base: 1, md: 3 }} gap={3}>
            <SpendMetrics spend={data} testIdPrefix="spot-stats" />
          </SimpleGrid>
          {data.placements.length === 0 ? (
            <Text color="fg.muted" data-testid="spot-stats-empty">
              No attempts in this window.
            </Text>
          ) : (
            <DataTable columns={COLUMNS} testId="spot-stats-table">
              {data.placements.map((placement) => (
                <PlacementRow key={placementKey(placement)} placement={placement} />
              ))}
            </DataTable>
          )}
        </Stack>
      )}
    </SectionCard>
  );
}
