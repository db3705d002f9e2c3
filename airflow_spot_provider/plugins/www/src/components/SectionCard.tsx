import { Card, HStack } from "@chakra-ui/react";
import type { ReactNode } from "react";

type SectionCardProps = {
  title: string;
  testId: string;
  size?: "sm" | "md";
  // Controls shown right of the title (filters, a window picker).
  actions?: ReactNode;
  children: ReactNode;
  [data: `data-${string}`]: string | number | undefined;
};

// One titled, outlined block of a page (totals, timeline, jobs, statistics).
export function SectionCard({ title, testId, size = "md", actions, children, ...data }: SectionCardProps) {
  return (
    <Card.Root size={size} variant="outline" data-testid={testId} {...data}>
      <Card.Header>
        <HStack justify="space-between" wrap="wrap" gap={3}>
          <Card.Title>{title}</Card.Title>
          {actions}
        </HStack>
      </Card.Header>
      <Card.Body>{children}</Card.Body>
    </Card.Root>
  );
}
