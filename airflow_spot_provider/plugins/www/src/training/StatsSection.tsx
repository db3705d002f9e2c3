import { Box, Button, ButtonGroup, Card, HStack, SimpleGrid, Stack, Table, Text } from "@chakra-ui/react";
import { useState } from "react";

import { apiUrl } from "../api";
import { ErrorState } from "../components/ErrorState";
import { Loading } from "../components/Loading";
import { Metric } from "../components/Metric";
import { duration, hours, money, percent } from "../format";
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

function PlacementRow({ placement }: { placement: Placement }) {
  return (
    <Table.Row
      data-testid="spot-stats-row"
      data-key={`${placement.backend}/${placement.instance_type}/${placement.zone}`}
    >
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

  return (
    <Card.Root variant="outline" data-testid="spot-stats" data-window-days={range.days}>
      <Card.Header>
        <HStack justify="space-between" wrap="wrap" gap={3}>
          <Card.Title>Placements and spend</Card.Title>
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
        </HStack>
      </Card.Header>
      <Card.Body>
        {error === null ? null : <ErrorState error={error} />}
        {loading && data === null ? <Loading what="statistics" /> : null}
        {data === null ? null : (
          <Stack gap={4}>
            <SimpleGrid columns={{ base: 1, md: 3 }} gap={3}>
              <Metric label="Spend" value={money(data.cost)} raw={data.cost} testId="spot-stats-cost" />
              <Metric
                label="On-demand equivalent"
                value={money(data.on_demand_equivalent_cost)}
                raw={data.on_demand_equivalent_cost}
                testId="spot-stats-on-demand"
              />
              <Metric
                label="Savings"
                value={percent(data.savings_pct)}
                raw={data.savings_pct}
                testId="spot-stats-savings"
              />
            </SimpleGrid>
            {data.placements.length === 0 ? (
              <Text color="fg.muted" data-testid="spot-stats-empty">
                No attempts in this window.
              </Text>
            ) : (
              <Box overflowX="auto" borderWidth="1px" borderColor="border" borderRadius="md">
                <Table.Root size="sm" data-testid="spot-stats-table">
                  <Table.Header>
                    <Table.Row>
                      {COLUMNS.map((column) => (
                        <Table.ColumnHeader key={column}>{column}</Table.ColumnHeader>
                      ))}
                    </Table.Row>
                  </Table.Header>
                  <Table.Body>
                    {data.placements.map((placement) => (
                      <PlacementRow
                        key={`${placement.backend}/${placement.instance_type}/${placement.zone}`}
                        placement={placement}
                      />
                    ))}
                  </Table.Body>
                </Table.Root>
              </Box>
            )}
          </Stack>
        )}
      </Card.Body>
    </Card.Root>
  );
}
