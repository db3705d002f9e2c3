"""Print the preemption → backup-save → resume cycle from an `airflow dags test` log, without log noise."""

from __future__ import annotations

import re
import sys

KEEP = re.compile(
    r"Launched attempt|attempt \d+ \[try \d+\]|Backup-save|Relaunching|Job finished|Reconnecting"
    r"|interruption notice|\[agent\] restored|no checkpoint in|validation accuracy"
)
STRUCTLOG = re.compile(r"^\S+Z \[\w+\s*\] (.*?)(?: \[[\w.]+\] loc=\S+)?$")


def main(path: str) -> None:
    print("\nWhat happened to the training task:")
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.rstrip()
        if not KEEP.search(line):
            continue
        match = STRUCTLOG.match(line)
        text = (match.group(1) if match else line).strip()
        text = re.sub(r" \[airflow\.task\.operators\.[\w.]+\] loc=\S+$", "", text)
        if "[agent]" in text:
            text = "    vm> " + text.split("[agent] ", 1)[1]
        elif "interruption notice: saved" in text:
            text = "    job> " + text
        elif "validation accuracy" in text:
            text = "evaluate: " + text
        print(text[:400])


if __name__ == "__main__":
    main(sys.argv[1])
