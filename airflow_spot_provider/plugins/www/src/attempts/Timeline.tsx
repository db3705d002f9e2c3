import { Box, Grid, HStack, Stack, Text } from "@chakra-ui/react";
import type { ReactNode } from "react";

import { SectionCard } from "../components/SectionCard";
import { StatusBadge, statusPalette } from "../components/StatusBadge";
import { duration, epochTime } from "../format";
import type { Attempt } from "../types";
import { backupOutcome, backupSummary, type BackupOutcome } from "./backupSave";

// Share of the lane used for time; the rest leaves room for a backup-save block after the last bar.
const TRACK_PCT = 94;
const BACKUP_PCT = 4;
const MIN_BAR_PCT = 0.6;

const BACKUP_PALETTE: Record<BackupOutcome, string> = { uploaded: "yellow", skipped: "gray", failed: "red" };

type Span = { attempt: Attempt; start: number; end: number };

// A running attempt has no end yet: its bar grows to "now" on every refresh.
function spansOf(attempts: Attempt[], now: number): Span[] {
  return attempts.map((attempt) => {
    const start = attempt.launched_at ?? attempt.started_at ?? attempt.ended_at ?? now;
    return { attempt, start, end: Math.max(attempt.ended_at ?? now, start) };
  });
}

function Lane({ span, previousEnd, at }: { span: Span; previousEnd: number | null; at: (t: number) => number }) {
  const { attempt, start, end } = span;
  const palette = statusPalette(attempt.status);
  const left = at(start);
  const width = Math.max(at(end) - left, MIN_BAR_PCT);
  const gapLeft = previousEnd === null ? null : at(previousEnd);
  const save = attempt.status === "preempted" ? attempt.backup_save : null;
  return (
    <Box position="relative" h="7" bg="bg.subtle" borderRadius="sm">
      {gapLeft !== null && left > gapLeft ? (
        <Box
          position="absolute"
          left={`${gapLeft}%`}
          width={`${left - gapLeft}%`}
          top="2"
          bottom="2"
          borderTopWidth="1px"
          borderBottomWidth="1px"
          borderStyle="dashed"
          borderColor="fg.subtle"
          overflow="hidden"
          title={`not running for ${duration(start - (previousEnd ?? start))}`}
          data-testid={attempt.capacity_waits > 0 ? "spot-timeline-wait" : undefined}
        >
          {attempt.capacity_waits > 0 ? (
            <Text fontSize="2xs" lineHeight="1" color="fg.muted" whiteSpace="nowrap" px={1}>
              {`capacity wait ×${attempt.capacity_waits}`}
            </Text>
          ) : null}
        </Box>
      ) : null}
      <Box
        position="absolute"
        left={`${left}%`}
        width={`${width}%`}
        top="1"
        bottom="1"
        bg={`${palette}.solid`}
        borderRadius="sm"
        title={`#${attempt.attempt} ${attempt.status}: ${epochTime(start)} → ${
          attempt.ended_at === null ? "now" : epochTime(end)
        } (${duration(end - start)})`}
        data-testid="spot-timeline-bar"
        data-status={attempt.status}
      />
      {attempt.notice_at === null ? null : (
        <Box
          position="absolute"
          left={`${at(attempt.notice_at)}%`}
          width="3px"
          top="0"
          bottom="0"
          bg="fg"
          title={`preemption notice at ${epochTime(attempt.notice_at)}`}
          data-testid="spot-timeline-notice"
        />
      )}
      {save === null ? null : (
        <Box
          position="absolute"
          left={`${left + width}%`}
          width={`${BACKUP_PCT}%`}
          top="1"
          bottom="1"
          bg={`${BACKUP_PALETTE[backupOutcome(save)]}.muted`}
          borderWidth="1px"
          borderStyle="dashed"
          borderColor={`${BACKUP_PALETTE[backupOutcome(save)]}.solid`}
          borderRadius="sm"
          title={`backup save ${backupSummary(save)}`}
          data-testid="spot-timeline-backup"
          data-outcome={backupOutcome(save)}
        />
      )}
    </Box>
  );
}

function Legend() {
  const item = (swatch: ReactNode, label: string) => (
    <HStack gap={1} key={label}>
      {swatch}
      <Text fontSize="xs" color="fg.muted">
        {label}
      </Text>
    </HStack>
  );
  return (
    <HStack gap={4} wrap="wrap">
      {item(<Box w="3px" h="3" bg="fg" />, "preemption notice")}
      {item(<Box w="3" h="3" bg="yellow.muted" borderWidth="1px" borderStyle="dashed" borderColor="yellow.solid" />, "backup save")}
      {item(<Box w="4" h="0" borderTopWidth="1px" borderStyle="dashed" borderColor="fg.subtle" />, "waiting (capacity)")}
    </HStack>
  );
}

export function Timeline({ attempts }: { attempts: Attempt[] }) {
  const spans = spansOf(attempts, Date.now() / 1000);
  const t0 = Math.min(...spans.map((span) => span.start));
  const t1 = Math.max(...spans.map((span) => Math.max(span.end, span.attempt.notice_at ?? span.end)));
  const at = (t: number) => ((t - t0) / Math.max(t1 - t0, 1)) * TRACK_PCT;
  const live = attempts.some((attempt) => attempt.ended_at === null);
  return (
    <SectionCard title="Timeline" testId="spot-timeline" size="sm">
      <Stack gap={2}>
        {spans.map((span, index) => (
          <Grid key={span.attempt.attempt} templateColumns="8rem 1fr" gap={3} alignItems="center">
            <HStack gap={2}>
              <Text fontSize="sm" fontWeight="semibold">
                #{span.attempt.attempt}
              </Text>
              <StatusBadge status={span.attempt.status} />
            </HStack>
            <Lane span={span} previousEnd={index === 0 ? null : (spans[index - 1]?.end ?? null)} at={at} />
          </Grid>
        ))}
        <Grid templateColumns="8rem 1fr" gap={3}>
          <Box />
          <HStack justify="space-between" pr={`${100 - TRACK_PCT}%`}>
            <Text fontSize="xs" color="fg.muted">
              {epochTime(t0)}
            </Text>
            <Text fontSize="xs" color="fg.muted">
              {live ? "now" : epochTime(t1)}
            </Text>
          </HStack>
        </Grid>
        <Legend />
      </Stack>
    </SectionCard>
  );
}
