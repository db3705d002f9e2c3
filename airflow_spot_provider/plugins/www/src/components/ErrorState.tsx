import { Alert } from "@chakra-ui/react";

import { ApiError } from "../api";

const DEFAULT_HINTS: Record<number, string> = {
  401: "Your session has expired: log in to Airflow again.",
  403: "You do not have permission to read this DAG.",
};

type ErrorStateProps = { error: Error; hints?: Record<number, string>; testId?: string };

// Shows the HTTP status (e.g. "404 Not Found") and the server's detail instead of an empty page.
export function ErrorState({ error, hints = {}, testId = "spot-error" }: ErrorStateProps) {
  const status = error instanceof ApiError ? error.status : null;
  const title = error instanceof ApiError ? `${error.status} ${error.statusText}` : "Request failed";
  const hint = status === null ? undefined : (hints[status] ?? DEFAULT_HINTS[status]);
  const detail = error instanceof ApiError ? error.detail : error.message;
  return (
    <Alert.Root status="error" data-testid={testId} data-http-status={status ?? undefined} my={2}>
      <Alert.Indicator />
      <Alert.Content>
        <Alert.Title data-testid="spot-error-title">{title}</Alert.Title>
        {hint !== undefined || detail ? (
          <Alert.Description>{[hint, detail].filter(Boolean).join(" ")}</Alert.Description>
        ) : null}
      </Alert.Content>
    </Alert.Root>
  );
}
