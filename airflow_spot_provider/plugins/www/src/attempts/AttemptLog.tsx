import { Box, Button, chakra, HStack, Text } from "@chakra-ui/react";
import { useEffect, useLayoutEffect, useRef } from "react";

import { ApiError, apiUrl, getText, type Query } from "../api";
import { ErrorState } from "../components/ErrorState";
import { Loading } from "../components/Loading";
import { SectionCard } from "../components/SectionCard";
import { isActive, type Attempt } from "../types";
import { useApi } from "../useApi";

const LIVE_REFRESH_MS = 5000;
// Scrolled this close to the end, a refresh keeps the newest lines in view (as a terminal does).
const FOLLOW_PX = 16;
const HINTS: Record<number, string> = { 403: "You do not have permission to read this DAG's task logs." };

// No log is not an error: the agent uploads it on its first sync round, and older attempts may have none.
async function logOrNothing(url: string, signal: AbortSignal): Promise<string | null> {
  try {
    return await getText(url, signal);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

// Long lines wrap (anywhere, if they have no spaces): nothing is cut off on the right.
function LogText({ text }: { text: string }) {
  const box = useRef<HTMLPreElement>(null);
  const follow = useRef(true);
  useLayoutEffect(() => {
    if (box.current !== null && follow.current) box.current.scrollTop = box.current.scrollHeight;
  }, [text]);
  return (
    <chakra.pre
      ref={box}
      onScroll={(event) => {
        const { scrollHeight, scrollTop, clientHeight } = event.currentTarget;
        follow.current = scrollHeight - scrollTop - clientHeight < FOLLOW_PX;
      }}
      data-testid="spot-attempt-log"
      m={0}
      p={3}
      maxH="28rem"
      overflowY="auto"
      overflowX="hidden"
      whiteSpace="pre-wrap"
      overflowWrap="anywhere"
      fontFamily="mono"
      fontSize="xs"
      lineHeight="1.5"
      bg="bg.subtle"
      borderWidth="1px"
      borderColor="border"
      borderRadius="md"
    >
      {text}
    </chakra.pre>
  );
}

// One attempt's own log (the job's output and the agent's lines) from the checkpoint store; reloaded while it runs.
export function AttemptLog({ task, attempt, onClose }: { task: Query; attempt: Attempt; onClose: () => void }) {
  const active = isActive(attempt.status);
  const url = apiUrl("log", { ...task, attempt: attempt.attempt });
  const { data, error, loading } = useApi<string | null>(url, () => (active ? LIVE_REFRESH_MS : null), logOrNothing);
  const panel = useRef<HTMLDivElement>(null);
  // A block, not an expression: browsers where scrollIntoView returns a promise would hand it to React as a cleanup.
  useEffect(() => {
    panel.current?.scrollIntoView({ block: "nearest" });
  }, [attempt.attempt]);

  const close = (
    <Button size="xs" variant="outline" onClick={onClose} data-testid="spot-attempt-log-close">
      Close
    </Button>
  );
  return (
    <Box ref={panel}>
      <SectionCard title={`Log of attempt #${attempt.attempt}`} testId="spot-attempt-log-panel" size="sm" actions={close}>
        <HStack justify="space-between" wrap="wrap" gap={2} mb={2}>
          <Text fontSize="xs" color="fg.muted">
            The job's output and the agent's lines ([agent]), as the agent last copied them to the checkpoint store
            (the last MiB).
          </Text>
          {active ? (
            <Text fontSize="xs" color="fg.muted">
              refreshing every 5 s
            </Text>
          ) : null}
        </HStack>
        {error === null ? null : <ErrorState error={error} hints={HINTS} testId="spot-attempt-log-error" />}
        {loading && data === null ? <Loading what="the log" /> : null}
        {loading || error !== null || data !== null ? null : (
          <Text color="fg.muted" data-testid="spot-attempt-log-missing">
            {active ? "No log yet: the agent copies it on its next sync round." : "This attempt left no log in the store."}
          </Text>
        )}
        {data === null ? null : <LogText text={data} />}
      </SectionCard>
    </Box>
  );
}
