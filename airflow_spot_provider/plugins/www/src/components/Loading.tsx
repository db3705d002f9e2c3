import { HStack, Spinner, Text } from "@chakra-ui/react";

export function Loading({ what }: { what: string }) {
  return (
    <HStack data-testid="spot-loading" gap={2} py={4} color="fg.muted">
      <Spinner size="sm" />
      <Text>Loading {what}…</Text>
    </HStack>
  );
}
