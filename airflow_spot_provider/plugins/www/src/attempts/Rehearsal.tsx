import { Alert, Button, CloseButton, Dialog, Field, Input, Portal, Stack, Text } from "@chakra-ui/react";
import { useState } from "react";

import { apiUrl, postJson, toError, type Query } from "../api";
import { ErrorState } from "../components/ErrorState";
import type { Attempt, RehearsalResponse } from "../types";

// The server's default: between GCE's 30 s notice and EC2's 2 minutes.
const DEFAULT_GRACE_SECONDS = 30;
const HINTS: Record<number, string> = { 403: "A rehearsal needs permission to edit this DAG." };

export type RehearsalOutcome = { posted: RehearsalResponse } | { error: Error } | null;

// POST /spot/api/rehearse for the task instance, and what came of it.
export function useRehearsal(task: Query) {
  const [pending, setPending] = useState(false);
  const [outcome, setOutcome] = useState<RehearsalOutcome>(null);
  const rehearse = async (grace: number): Promise<void> => {
    setPending(true);
    try {
      setOutcome({ posted: await postJson<RehearsalResponse>(apiUrl("rehearse", { ...task, grace })) });
    } catch (error) {
      setOutcome({ error: toError(error) });
    } finally {
      setPending(false);
    }
  };
  return { pending, outcome, rehearse, dismiss: () => setOutcome(null) };
}

const seconds = (value: number) => `${value} s`;

type RehearseButtonProps = { attempt: Attempt; pending: boolean; onConfirm: (grace: number) => Promise<void> };

// The button and its confirmation: which attempt gets the notice, and after how long its job is ended.
export function RehearseButton({ attempt, pending, onConfirm }: RehearseButtonProps) {
  const [open, setOpen] = useState(false);
  const [graceText, setGraceText] = useState(String(DEFAULT_GRACE_SECONDS));
  const grace = Number(graceText);
  const valid = graceText.trim() !== "" && Number.isFinite(grace) && grace >= 0;
  const running = attempt.status === "running";
  const where = [attempt.instance_id, attempt.instance_type, attempt.zone].filter(Boolean).join(", ");
  return (
    <Dialog.Root role="alertdialog" placement="center" open={open} onOpenChange={(details) => setOpen(details.open)}>
      <Dialog.Trigger asChild>
        <Button
          size="xs"
          variant="outline"
          colorPalette="orange"
          disabled={!running}
          title={running ? undefined : `Attempt #${attempt.attempt} is ${attempt.status}: a rehearsal needs it running.`}
          data-testid="spot-rehearse-button"
        >
          Rehearse preemption
        </Button>
      </Dialog.Trigger>
      <Portal>
        <Dialog.Backdrop />
        <Dialog.Positioner>
          <Dialog.Content data-testid="spot-rehearse-dialog" data-attempt={attempt.attempt}>
            <Dialog.Header>
              <Dialog.Title>{`Rehearse a preemption of attempt #${attempt.attempt}?`}</Dialog.Title>
            </Dialog.Header>
            <Dialog.Body>
              <Stack gap={3}>
                <Text data-testid="spot-rehearse-summary">
                  {`Attempt #${attempt.attempt}${where ? ` (${where})` : ""} gets an interruption notice within about ` +
                    `5 s, as if from the cloud: its job gets SIGTERM and the notice file, and the agent syncs the ` +
                    `checkpoints. If the job has not exited ${valid ? seconds(grace) : "…"} later, the agent ends it, ` +
                    "as the cloud would take the VM. The attempt then ends as preempted and the job is relaunched " +
                    "from its latest checkpoint, in the same try."}
                </Text>
                <Field.Root invalid={!valid}>
                  <Field.Label>Grace (seconds)</Field.Label>
                  <Input
                    type="number"
                    min={0}
                    step={1}
                    width="8rem"
                    value={graceText}
                    onChange={(event) => setGraceText(event.target.value)}
                    data-testid="spot-rehearse-grace"
                  />
                  <Field.HelperText>EC2 gives 2 minutes, GCE 30 s.</Field.HelperText>
                  <Field.ErrorText>A number of seconds, 0 or more.</Field.ErrorText>
                </Field.Root>
              </Stack>
            </Dialog.Body>
            <Dialog.Footer>
              <Dialog.ActionTrigger asChild>
                <Button variant="outline">Cancel</Button>
              </Dialog.ActionTrigger>
              <Button
                colorPalette="orange"
                loading={pending}
                disabled={!valid}
                onClick={async () => {
                  await onConfirm(grace);
                  setOpen(false);
                }}
                data-testid="spot-rehearse-confirm"
              >
                {`Rehearse with ${valid ? seconds(grace) : "…"} grace`}
              </Button>
            </Dialog.Footer>
            <Dialog.CloseTrigger asChild>
              <CloseButton size="sm" />
            </Dialog.CloseTrigger>
          </Dialog.Content>
        </Dialog.Positioner>
      </Portal>
    </Dialog.Root>
  );
}

// The answer to the last rehearsal asked for on this page.
export function RehearsalResult({ outcome, onDismiss }: { outcome: RehearsalOutcome; onDismiss: () => void }) {
  if (outcome === null) return null;
  if ("error" in outcome) return <ErrorState error={outcome.error} hints={HINTS} testId="spot-rehearse-error" />;
  const { attempt, instance_id: instance, grace } = outcome.posted;
  return (
    <Alert.Root status="info" data-testid="spot-rehearse-result" data-attempt={attempt}>
      <Alert.Indicator />
      <Alert.Content>
        <Alert.Title>{`Rehearsal posted for attempt #${attempt}${instance ? ` (${instance})` : ""}`}</Alert.Title>
        <Alert.Description>
          {`Its agent gives the job the notice within about 5 s and ends it after ${seconds(grace)} at the latest. ` +
            "The attempt then shows as preempted (rehearsed preemption) and the next one launches."}
        </Alert.Description>
      </Alert.Content>
      <CloseButton size="sm" onClick={onDismiss} />
    </Alert.Root>
  );
}
