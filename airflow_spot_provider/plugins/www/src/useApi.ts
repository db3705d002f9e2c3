import { useEffect, useRef, useState } from "react";

import { ApiError, getJson } from "./api";

export type ApiState<T> = { data: T | null; error: Error | null; loading: boolean };

// Delay before the next refresh of the same URL, or null to stop refreshing.
export type RefreshPolicy<T> = (data: T) => number | null;

const toError = (error: unknown): Error => (error instanceof Error ? error : new Error(String(error)));

// A failed refresh is retried unless the server said the request itself is wrong (4xx).
const isTransient = (error: Error): boolean => !(error instanceof ApiError) || error.status >= 500;

export function useApi<T>(url: string, refresh?: RefreshPolicy<T>): ApiState<T> {
  const [state, setState] = useState<ApiState<T>>({ data: null, error: null, loading: true });
  const refreshRef = useRef(refresh);
  refreshRef.current = refresh;

  useEffect(() => {
    const controller = new AbortController();
    let timer: number | undefined;
    let delay: number | null = null;
    setState({ data: null, error: null, loading: true });

    const load = async (): Promise<void> => {
      try {
        const data = await getJson<T>(url, controller.signal);
        setState({ data, error: null, loading: false });
        delay = refreshRef.current?.(data) ?? null;
      } catch (caught) {
        if (controller.signal.aborted) return;
        const error = toError(caught);
        // Keep the last good data on screen next to the error.
        setState((previous) => ({ data: previous.data, error, loading: false }));
        if (!isTransient(error)) delay = null;
      }
      if (delay !== null && !controller.signal.aborted) timer = window.setTimeout(() => void load(), delay);
    };

    void load();
    return () => {
      controller.abort();
      window.clearTimeout(timer);
    };
  }, [url]);

  return state;
}
