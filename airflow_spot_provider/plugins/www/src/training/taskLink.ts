import type { Job } from "../types";

// Encodes what would break a path segment ("/", "?", "#", "%", spaces...) but keeps the ":" and "+" of
// run ids readable, as in the Airflow UI's own links.
const segment = (value: string): string =>
  encodeURIComponent(value).replace(/%(3A|2B|40|2C|3B|3D|24|26)/gi, (escaped) => decodeURIComponent(escaped));

// Router path (relative to the Airflow base URL) of the task instance's "Spot attempts" tab. A mapped task
// instance has its own route in the Airflow UI (`…/tasks/<task>/mapped/<index>`), with the plugin tabs under it.
export function taskTabPath(job: Pick<Job, "dag_id" | "run_id" | "task_id" | "map_index">): string {
  const task = ["dags", segment(job.dag_id), "runs", segment(job.run_id), "tasks", segment(job.task_id)];
  const mapped = job.map_index >= 0 ? ["mapped", String(job.map_index)] : [];
  return `/${[...task, ...mapped, "plugin", "spot"].join("/")}`;
}
