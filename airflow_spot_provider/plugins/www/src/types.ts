// Shapes of the JSON served by the plugin's API (see the API contract).

export type AttemptStatus = "launching" | "running" | "succeeded" | "failed" | "preempted" | "lost" | "cancelled";

// An attempt that is still launching or running: the job is live.
export const isActive = (status: AttemptStatus): boolean => status === "launching" || status === "running";

export type Progress = { step?: number; epoch?: number; [key: string]: unknown };

export type BackupSave = {
  skipped: boolean;
  reason: string;
  uploaded: string[];
  bytes: number;
  latest: string | null;
  helper_id: string | null;
  error: string | null;
};

export type LaunchError = {
  code: string;
  message: string;
  instance_type: string | null;
  zone: string | null;
  market: string | null;
  time: number | string | null;
};

export type Attempt = {
  attempt: number;
  try_number: number;
  backend: string;
  status: AttemptStatus;
  reason: string;
  exit_code: number | null;
  instance_id: string | null;
  instance_type: string | null;
  zone: string | null;
  market: "spot" | "on-demand";
  price_per_hour: number | null;
  on_demand_price_per_hour: number | null;
  launched_at: number | null;
  started_at: number | null;
  notice_at: number | null;
  ended_at: number | null;
  restored_from: string | null;
  last_checkpoint: string | null;
  last_checkpoint_at: number | null;
  progress: Progress | null;
  backup_save: BackupSave | null;
  launch_errors: LaunchError[];
  capacity_waits: number;
  seconds: number;
  cost: number;
  lost_seconds: number;
};

export type AttemptTotals = {
  attempts: number;
  preemptions: number;
  lost: number;
  user_failures: number;
  instance_seconds: number;
  lost_work_seconds: number;
  cost: number;
  on_demand_equivalent_cost: number;
  savings_pct: number | null;
};

export type AttemptsResponse = {
  dag_id: string;
  run_id: string;
  task_id: string;
  map_index: number;
  live: boolean;
  attempts: Attempt[];
  totals: AttemptTotals;
  // The user may edit the DAG: what a rehearsed preemption asks for.
  can_rehearse: boolean;
};

// POST /spot/api/rehearse: the rehearsal was posted for this attempt.
export type RehearsalResponse = { attempt: number; instance_id: string | null; grace: number };

export type Job = {
  dag_id: string;
  run_id: string;
  task_id: string;
  map_index: number;
  backend: string;
  attempt: number;
  status: AttemptStatus;
  attempts: number;
  preemptions: number;
  lost: number;
  cost: number;
  on_demand_equivalent_cost: number;
  savings_pct: number | null;
  progress: Progress | null;
  updated_at: string;
};

export type JobsResponse = { total: number; jobs: Job[] };

export type Placement = {
  backend: string;
  instance_type: string;
  zone: string;
  attempts: number;
  preemptions: number;
  attempt_hours: number;
  preemptions_per_attempt_hour: number;
  mean_seconds_to_preemption: number | null;
};

export type StatsResponse = {
  since: string;
  placements: Placement[];
  cost: number;
  on_demand_equivalent_cost: number;
  savings_pct: number | null;
};
