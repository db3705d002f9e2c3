import { Badge, Text } from "@chakra-ui/react";

import { apiUrl } from "../api";
import { ErrorState } from "../components/ErrorState";
import { Loading } from "../components/Loading";
import { Page } from "../components/Page";
import type { AttemptsResponse } from "../types";
import { useApi } from "../useApi";
import { AttemptsTable } from "./AttemptsTable";
import { Timeline } from "./Timeline";
import { TotalsCard } from "./TotalsCard";

const LIVE_REFRESH_MS = 5000;
const TITLE = "Spot attempts";

// Props the Airflow UI passes to a task instance plugin tab (route parameters, so strings). A mapped task
// instance's tab is under `…/tasks/<task>/mapped/<index>/plugin/spot`, which sets mapIndex.
export type PluginProps = { dagId?: string; runId?: string; taskId?: string; mapIndex?: string };

// The route parameter, else a ?map_index= query (links of earlier versions), else -1 (not mapped).
function mapIndexOf(prop: string | undefined): number {
  const raw = prop ?? new URLSearchParams(window.location.search).get("map_index") ?? "";
  const parsed = raw === "" ? -1 : Number(raw);
  return Number.isInteger(parsed) ? parsed : -1;
}

const ERROR_HINTS: Record<number, string> = { 404: "This task instance has no spot attempts." };

function AttemptsView({ dagId, runId, taskId, mapIndex }: Required<Omit<PluginProps, "mapIndex">> & { mapIndex: number }) {
  const url = apiUrl("attempts", { dag_id: dagId, run_id: runId, task_id: taskId, map_index: mapIndex });
  const { data, error, loading } = useApi<AttemptsResponse>(url, (body) => (body.live ? LIVE_REFRESH_MS : null));
  const live = data?.live ? (
    <Badge colorPalette="blue" variant="surface" data-testid="spot-live">
      live · refreshing every 5 s
    </Badge>
  ) : null;

  return (
    <Page title={TITLE} titleSize="md" aside={live} data-testid="spot-attempts" data-live={data?.live ? "true" : "false"}>
      {error === null ? null : <ErrorState error={error} hints={ERROR_HINTS} />}
      {loading && data === null ? <Loading what="attempts" /> : null}
      {data === null ? null : (
        <>
          <TotalsCard totals={data.totals} />
          {data.attempts.length === 0 ? (
            <Text color="fg.muted" data-testid="spot-attempts-empty">
              No attempt has been launched yet.
            </Text>
          ) : (
            <>
              <Timeline attempts={data.attempts} />
              <AttemptsTable attempts={data.attempts} />
            </>
          )}
        </>
      )}
    </Page>
  );
}

export function SpotAttempts({ dagId, runId, taskId, mapIndex }: PluginProps) {
  if (!dagId || !runId || !taskId) {
    return (
      <Page title={TITLE} titleSize="md">
        <Text color="fg.muted">Open this tab from a task instance.</Text>
      </Page>
    );
  }
  return <AttemptsView dagId={dagId} runId={runId} taskId={taskId} mapIndex={mapIndexOf(mapIndex)} />;
}
