import { Button, HStack, Input, NativeSelect, Text } from "@chakra-ui/react";
import { useState } from "react";

import { apiUrl } from "../api";
import { ErrorState } from "../components/ErrorState";
import { Loading } from "../components/Loading";
import { SectionCard } from "../components/SectionCard";
import { isActive, type JobsResponse } from "../types";
import { useApi } from "../useApi";
import { JobsTable } from "./JobsTable";
import { useDebounced } from "./useDebounced";

const PAGE_SIZE = 50;
const LIVE_REFRESH_MS = 5000;
const IDLE_REFRESH_MS = 30000;
const STATES = ["", "running", "finished"] as const;
type StateFilter = (typeof STATES)[number];

// Filters may come in the page's query string (?dag_id=&state=), e.g. from a bookmarked link.
function initialFilters(): { dagId: string; state: StateFilter } {
  const query = new URLSearchParams(window.location.search);
  const state = query.get("state") ?? "";
  return { dagId: query.get("dag_id") ?? "", state: (STATES as readonly string[]).includes(state) ? (state as StateFilter) : "" };
}

export function JobsSection() {
  const [filters] = useState(initialFilters);
  const [dagInput, setDagInput] = useState(filters.dagId);
  const [state, setState] = useState<StateFilter>(filters.state);
  const [page, setPage] = useState(0);
  const dagId = useDebounced(dagInput.trim(), 400);

  const url = apiUrl("jobs", { state, dag_id: dagId, limit: PAGE_SIZE, offset: page * PAGE_SIZE });
  const { data, error, loading } = useApi<JobsResponse>(url, (body) =>
    body.jobs.some((job) => isActive(job.status)) ? LIVE_REFRESH_MS : IDLE_REFRESH_MS,
  );
  const first = page * PAGE_SIZE;

  const filterControls = (
    <HStack gap={2}>
      <Input
        size="sm"
        width="16rem"
        placeholder="Filter by DAG id"
        aria-label="DAG id"
        value={dagInput}
        onChange={(event) => {
          setDagInput(event.target.value);
          setPage(0);
        }}
        data-testid="spot-filter-dag"
      />
      <NativeSelect.Root size="sm" width="10rem">
        <NativeSelect.Field
          aria-label="State"
          value={state}
          onChange={(event) => {
            setState(event.target.value as StateFilter);
            setPage(0);
          }}
          data-testid="spot-filter-state"
        >
          <option value="">All states</option>
          <option value="running">Running</option>
          <option value="finished">Finished</option>
        </NativeSelect.Field>
        <NativeSelect.Indicator />
      </NativeSelect.Root>
    </HStack>
  );

  return (
    <SectionCard title="Jobs" testId="spot-jobs" actions={filterControls}>
      {error === null ? null : <ErrorState error={error} />}
      {loading && data === null ? <Loading what="jobs" /> : null}
      {data === null ? null : data.jobs.length === 0 ? (
        <Text color="fg.muted" data-testid="spot-jobs-empty">
          No spot jobs match these filters.
        </Text>
      ) : (
        <>
          <JobsTable jobs={data.jobs} />
          <HStack justify="space-between" mt={3}>
            <Text fontSize="sm" color="fg.muted" data-testid="spot-jobs-count">
              {`${first + 1}–${first + data.jobs.length} of ${data.total}`}
            </Text>
            <HStack gap={2}>
              <Button size="xs" variant="outline" disabled={page === 0} onClick={() => setPage(page - 1)}>
                Previous
              </Button>
              <Button
                size="xs"
                variant="outline"
                disabled={first + data.jobs.length >= data.total}
                onClick={() => setPage(page + 1)}
              >
                Next
              </Button>
            </HStack>
          </HStack>
        </>
      )}
    </SectionCard>
  );
}
