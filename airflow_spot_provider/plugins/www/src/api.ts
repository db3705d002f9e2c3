// Talks to the plugin's FastAPI app, mounted under the Airflow base URL (which may be a sub-path).

export type Query = Record<string, string | number | null | undefined>;

// Text for the common statuses, for servers (HTTP/2) that send no reason phrase.
const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  409: "Conflict",
  422: "Unprocessable Content",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
};

export class ApiError extends Error {
  readonly status: number;
  readonly statusText: string;
  readonly detail: string | null;

  constructor(status: number, statusText: string, detail: string | null) {
    super(detail === null ? `${status} ${statusText}` : `${status} ${statusText}: ${detail}`);
    this.status = status;
    this.statusText = statusText;
    this.detail = detail;
  }
}

export const toError = (error: unknown): Error => (error instanceof Error ? error : new Error(String(error)));

// The Airflow UI sets <base href> to its base URL; without one, the site root is the base.
export function airflowBase(): string {
  const base = document.querySelector("base") === null ? `${window.location.origin}/` : document.baseURI;
  return base.endsWith("/") ? base : `${base}/`;
}

export function apiUrl(path: string, query: Query = {}): string {
  const url = new URL(`spot/api/${path}`, airflowBase());
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, String(value));
  }
  return url.toString();
}

function detailOf(body: unknown): string | null {
  if (typeof body !== "object" || body === null || !("detail" in body)) return null;
  const detail = (body as { detail: unknown }).detail;
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

// The response when it is a success, else an ApiError with the server's detail (every error body is JSON).
async function request(url: string, init: RequestInit): Promise<Response> {
  const response = await fetch(url, { credentials: "include", ...init });
  if (!response.ok) {
    const body: unknown = await response.json().catch(() => null);
    const text = response.statusText || STATUS_TEXT[response.status] || "Error";
    throw new ApiError(response.status, text, detailOf(body));
  }
  return response;
}

export async function getJson<T>(url: string, signal: AbortSignal): Promise<T> {
  const response = await request(url, { headers: { Accept: "application/json" }, signal });
  return (await response.json()) as T;
}

export async function getText(url: string, signal: AbortSignal): Promise<string> {
  const response = await request(url, { headers: { Accept: "text/plain" }, signal });
  return response.text();
}

export async function postJson<T>(url: string): Promise<T> {
  const response = await request(url, { method: "POST", headers: { Accept: "application/json" } });
  return (await response.json()) as T;
}
