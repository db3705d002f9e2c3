import { Stat } from "@chakra-ui/react";

// `value` is the shown text; a count may be given as a number, which is then also its raw value.
type MetricProps = { label: string; value: string | number; raw?: number | null; help?: string; testId?: string };

// One figure of a totals card; data-value carries the unformatted number for scripts and tests.
export function Metric({ label, value, raw = typeof value === "number" ? value : null, help, testId }: MetricProps) {
  return (
    <Stat.Root borderWidth="1px" borderColor="border" borderRadius="md" px={3} py={2} bg="bg.panel">
      <Stat.Label>{label}</Stat.Label>
      <Stat.ValueText data-testid={testId} data-value={raw === null ? "" : String(raw)}>
        {String(value)}
      </Stat.ValueText>
      {help === undefined ? null : <Stat.HelpText>{help}</Stat.HelpText>}
    </Stat.Root>
  );
}
