import { useEffect, useRef, useState } from "react";

import { ApiError, getJson, toError } from "./api";

export type ApiState<T> = { data: T | null; error: Error | null; loading: boolean };

// Delay before the next refresh of the same URL, or null to stop refreshing.
export type RefreshPolicy<T> = (data: T) => number | null;

// Reads one URL (JSON by default).
export type Fetcher<T> = (url: string, signal: AbortSignal) => Promise<T>;

// A failed refresh is retried unless the server said the request itself is wrong (4xx).
const isTransient = (error: Error): boolean => !(error instanceof ApiError) || error.status >= 500;

export function useApi<T>(url: string, refresh?: RefreshPolicy<T>, fetcher: Fetcher<T> = getJson): ApiState<T> {
  const [state, setState] = useState<ApiState<T>>({ data: null, error: null, loading: true });
  const refreshRef = useRef(refresh);
  refreshRef.current = refresh;
  const fetcherRef = useRef(fetcher);
  fetcherRef.current = fetcher;

  useEffect(() => {
    const controller = new AbortController();
    let timer: number | undefined;
    let delay: number | null = null;
    setState({ data: null, error: null, loading: true });

    const load = async (): Promise<void> => {
      try {
        const data = await fetcherRef.current(url, controller.signal);
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
