import { Badge, HStack, Text } from "@chakra-ui/react";
import { useState } from "react";

import { apiUrl } from "../api";
import { ErrorState } from "../components/ErrorState";
import { Loading } from "../components/Loading";
import { Page } from "../components/Page";
import type { AttemptsResponse } from "../types";
import { useApi } from "../useApi";
import { AttemptLog } from "./AttemptLog";
import { AttemptsTable } from "./AttemptsTable";
import { RehearsalResult, RehearseButton, useRehearsal } from "./Rehearsal";
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
  const task = { dag_id: dagId, run_id: runId, task_id: taskId, map_index: mapIndex };
  const { data, error, loading } = useApi<AttemptsResponse>(apiUrl("attempts", task), (body) =>
    body.live ? LIVE_REFRESH_MS : null,
  );
  const [logOf, setLogOf] = useState<number | null>(null);
  const rehearsal = useRehearsal(task);
  const current = data?.attempts[data.attempts.length - 1];
  const logAttempt = data?.attempts.find((attempt) => attempt.attempt === logOf);
  const aside = data?.live ? (
    <HStack gap={2}>
      <Badge colorPalette="blue" variant="surface" data-testid="spot-live">
        live · refreshing every 5 s
      </Badge>
      {data.can_rehearse && current !== undefined ? (
        <RehearseButton attempt={current} pending={rehearsal.pending} onConfirm={rehearsal.rehearse} />
      ) : null}
    </HStack>
  ) : null;

  return (
    <Page title={TITLE} titleSize="md" aside={aside} data-testid="spot-attempts" data-live={data?.live ? "true" : "false"}>
      {error === null ? null : <ErrorState error={error} hints={ERROR_HINTS} />}
      <RehearsalResult outcome={rehearsal.outcome} onDismiss={rehearsal.dismiss} />
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
              <AttemptsTable
                attempts={data.attempts}
                logOf={logOf}
                onLog={(attempt) => setLogOf(attempt === logOf ? null : attempt)}
              />
              {logAttempt === undefined ? null : (
                <AttemptLog task={task} attempt={logAttempt} onClose={() => setLogOf(null)} />
              )}
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
