import { Box, Link, Table, Text } from "@chakra-ui/react";
import { Link as RouterLink } from "react-router-dom";

import { StatusBadge } from "../components/StatusBadge";
import { isoTime, money, percent, progressText } from "../format";
import type { Job } from "../types";
import { taskTabPath } from "./taskLink";

const COLUMNS = [
  "DAG",
  "Run",
  "Task",
  "Backend",
  "Status",
  "Attempt",
  "Attempts",
  "Preemptions",
  "Lost",
  "Cost",
  "Savings",
  "Progress",
  "Updated",
];

function JobRow({ job }: { job: Job }) {
  const key = `${job.dag_id}/${job.run_id}/${job.task_id}/${job.map_index}`;
  return (
    <Table.Row data-testid="spot-job-row" data-key={key} data-status={job.status}>
      <Table.Cell>{job.dag_id}</Table.Cell>
      <Table.Cell>
        <Text fontSize="xs" wordBreak="break-all">
          {job.run_id}
        </Text>
      </Table.Cell>
      <Table.Cell>
        <Link asChild colorPalette="blue" fontWeight="semibold">
          <RouterLink to={taskTabPath(job)} data-testid="spot-job-link">
            {job.map_index >= 0 ? `${job.task_id} [${job.map_index}]` : job.task_id}
          </RouterLink>
        </Link>
      </Table.Cell>
      <Table.Cell>{job.backend}</Table.Cell>
      <Table.Cell data-testid="spot-job-status">
        <StatusBadge status={job.status} />
      </Table.Cell>
      <Table.Cell>#{job.attempt}</Table.Cell>
      <Table.Cell>{job.attempts}</Table.Cell>
      <Table.Cell data-testid="spot-job-preemptions">{job.preemptions}</Table.Cell>
      <Table.Cell>{job.lost}</Table.Cell>
      <Table.Cell data-testid="spot-job-cost" data-value={job.cost}>
        {money(job.cost)}
      </Table.Cell>
      <Table.Cell data-testid="spot-job-savings" data-value={job.savings_pct ?? ""}>
        {percent(job.savings_pct)}
      </Table.Cell>
      <Table.Cell>
        <Text fontSize="xs">{progressText(job.progress)}</Text>
      </Table.Cell>
      <Table.Cell>
        <Text fontSize="xs">{isoTime(job.updated_at)}</Text>
      </Table.Cell>
    </Table.Row>
  );
}

export function JobsTable({ jobs }: { jobs: Job[] }) {
  return (
    <Box overflowX="auto" borderWidth="1px" borderColor="border" borderRadius="md">
      <Table.Root size="sm" data-testid="spot-jobs-table">
        <Table.Header>
          <Table.Row>
            {COLUMNS.map((column) => (
              <Table.ColumnHeader key={column}>{column}</Table.ColumnHeader>
            ))}
          </Table.Row>
        </Table.Header>
        <Table.Body>
          {jobs.map((job) => (
            <JobRow key={`${job.dag_id}/${job.run_id}/${job.task_id}/${job.map_index}`} job={job} />
          ))}
        </Table.Body>
      </Table.Root>
    </Box>
  );
}
