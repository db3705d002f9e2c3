import { Link, Table, Text } from "@chakra-ui/react";
import { Link as RouterLink } from "react-router-dom";

import { DataTable } from "../components/DataTable";
import { StatusBadge } from "../components/StatusBadge";
import { isoTime, money, percent } from "../format";
import { progressDetail, progressText } from "../progress";
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

const jobKey = (job: Job) => `${job.dag_id}/${job.run_id}/${job.task_id}/${job.map_index}`;

function JobRow({ job }: { job: Job }) {
  return (
    <Table.Row data-testid="spot-job-row" data-key={jobKey(job)} data-status={job.status}>
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
        <Text fontSize="xs" title={progressDetail(job.progress)} data-testid="spot-job-progress">
          {progressText(job.progress)}
        </Text>
      </Table.Cell>
      <Table.Cell>
        <Text fontSize="xs">{isoTime(job.updated_at)}</Text>
      </Table.Cell>
    </Table.Row>
  );
}

export function JobsTable({ jobs }: { jobs: Job[] }) {
  return (
    <DataTable columns={COLUMNS} testId="spot-jobs-table">
      {jobs.map((job) => (
        <JobRow key={jobKey(job)} job={job} />
      ))}
    </DataTable>
  );
}
