import { Box, Table } from "@chakra-ui/react";
import type { ReactNode } from "react";

// A small bordered table that scrolls sideways on narrow screens; `children` are its Table.Row elements.
export function DataTable({ columns, testId, children }: { columns: string[]; testId: string; children: ReactNode }) {
  return (
    <Box overflowX="auto" borderWidth="1px" borderColor="border" borderRadius="md">
      <Table.Root size="sm" data-testid={testId}>
        <Table.Header>
          <Table.Row>
            {columns.map((column) => (
              <Table.ColumnHeader key={column}>{column}</Table.ColumnHeader>
            ))}
          </Table.Row>
        </Table.Header>
        <Table.Body>{children}</Table.Body>
      </Table.Root>
    </Box>
  );
}
