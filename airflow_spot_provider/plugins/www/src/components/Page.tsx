import { Heading, HStack, Stack, type StackProps } from "@chakra-ui/react";
import type { ReactNode } from "react";

type PageProps = StackProps & { title: string; titleSize?: "md" | "lg"; aside?: ReactNode };

// The outer layout of both apps. The Airflow UI mounts a plugin in a box with a negative margin (m=-2), so
// without this padding the top of the heading is cut off under the task instance's tab bar.
export function Page({ title, titleSize = "lg", aside, children, ...rest }: PageProps) {
  return (
    <Stack gap={4} p={2} pt={3} {...rest}>
      <HStack justify="space-between" wrap="wrap" gap={3}>
        <Heading size={titleSize}>{title}</Heading>
        {aside}
      </HStack>
      {children}
    </Stack>
  );
}
