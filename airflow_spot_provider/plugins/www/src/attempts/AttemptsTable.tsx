import { Badge, Button, Code, Stack, Table, Text } from "@chakra-ui/react";

import { DataTable } from "../components/DataTable";
import { StatusBadge } from "../components/StatusBadge";
import { DASH, duration, epochTime, money, plural, pricePerHour } from "../format";
import { progressDetail, progressText } from "../progress";
import type { Attempt } from "../types";
import { backupSummary } from "./backupSave";

const Small = ({ children, title }: { children: string; title?: string }) => (
  <Text fontSize="xs" color="fg.muted" title={title}>
    {children}
  </Text>
);

const Path = ({ value }: { value: string | null }) =>
  value === null ? <>{DASH}</> : <Text fontSize="xs" wordBreak="break-all">{value}</Text>;

function ReasonCell({ attempt }: { attempt: Attempt }) {
  const errors = attempt.launch_errors;
  const progress = progressText(attempt.progress);
  return (
    <Stack gap={0}>
      <Text>{attempt.reason || DASH}</Text>
      {attempt.exit_code === null ? null : <Small>{`exit code ${attempt.exit_code}`}</Small>}
      {progress ? <Small title={progressDetail(attempt.progress)}>{progress}</Small> : null}
      {attempt.capacity_waits > 0 ? <Small>{plural(attempt.capacity_waits, "capacity wait")}</Small> : null}
      {errors.length > 0 ? (
        <Text fontSize="xs" color="fg.error" title={errors.map((e) => `${e.code}: ${e.message}`).join("\n")}>
          {`${plural(errors.length, "launch error")}: ${errors[errors.length - 1]?.code ?? ""}`}
        </Text>
      ) : null}
    </Stack>
  );
}

type LogToggle = { logShown: boolean; onLog: () => void };

function AttemptRow({ attempt, logShown, onLog }: { attempt: Attempt } & LogToggle) {
  return (
    <Table.Row data-testid="spot-attempt-row" data-attempt={attempt.attempt} data-status={attempt.status}>
      <Table.Cell>
        <Text fontWeight="semibold">#{attempt.attempt}</Text>
        <Small>{`try ${attempt.try_number} · ${attempt.backend}`}</Small>
        <Button
          size="2xs"
          mt={1}
          variant={logShown ? "solid" : "outline"}
          aria-pressed={logShown}
          onClick={onLog}
          data-testid="spot-attempt-log-button"
        >
          Log
        </Button>
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-status">
        <StatusBadge status={attempt.status} />
      </Table.Cell>
      <Table.Cell>
        <ReasonCell attempt={attempt} />
      </Table.Cell>
      <Table.Cell whiteSpace="nowrap">
        {attempt.instance_id === null ? DASH : <Code size="sm">{attempt.instance_id}</Code>}
      </Table.Cell>
      <Table.Cell whiteSpace="nowrap">{attempt.instance_type ?? DASH}</Table.Cell>
      <Table.Cell whiteSpace="nowrap">{attempt.zone ?? DASH}</Table.Cell>
      <Table.Cell>
        <Badge variant="outline" colorPalette={attempt.market === "spot" ? "teal" : "gray"}>
          {attempt.market}
        </Badge>
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-price" whiteSpace="nowrap">
        <Text>{pricePerHour(attempt.price_per_hour)}</Text>
        {attempt.on_demand_price_per_hour === null ? null : (
          <Small>{`on-demand ${pricePerHour(attempt.on_demand_price_per_hour)}`}</Small>
        )}
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-duration" whiteSpace="nowrap">
        <Text>{duration(attempt.seconds)}</Text>
        {attempt.lost_seconds > 0 ? <Small>{`lost ${duration(attempt.lost_seconds)}`}</Small> : null}
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-cost" data-value={attempt.cost}>
        {money(attempt.cost)}
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-restored-from">
        <Path value={attempt.restored_from} />
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-checkpoint">
        <Path value={attempt.last_checkpoint} />
        {attempt.last_checkpoint_at === null ? null : <Small>{epochTime(attempt.last_checkpoint_at)}</Small>}
      </Table.Cell>
      <Table.Cell data-testid="spot-attempt-backup">
        {attempt.backup_save === null ? DASH : <Text fontSize="xs">{backupSummary(attempt.backup_save)}</Text>}
      </Table.Cell>
    </Table.Row>
  );
}

const COLUMNS = [
  "Attempt",
  "Status",
  "Reason",
  "Instance",
  "Type",
  "Zone",
  "Market",
  "Price",
  "Duration",
  "Cost",
  "Restored from",
  "Last checkpoint",
  "Backup save",
];

type AttemptsTableProps = { attempts: Attempt[]; logOf: number | null; onLog: (attempt: number) => void };

// `logOf`: the attempt whose log is open (each row's Log button opens its own, or closes it).
export function AttemptsTable({ attempts, logOf, onLog }: AttemptsTableProps) {
  return (
    <DataTable columns={COLUMNS} testId="spot-attempts-table">
      {attempts.map((attempt) => (
        <AttemptRow
          key={attempt.attempt}
          attempt={attempt}
          logShown={logOf === attempt.attempt}
          onLog={() => onLog(attempt.attempt)}
        />
      ))}
    </DataTable>
  );
}
