"""A finding of ``lint``: code, severity, file and line, message, fix. Shared by the rules of the boot path
(assess/lint.py) and of the node's systemd-sysext setup (sysext/conf.py), which the CLI merges."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    file: str
    line: int | None
    message: str
    fix: str

    def as_json(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "fix": self.fix,
        }

    def __str__(self) -> str:
        """Two lines, each escaped (bootkeeper.shown): a file name or a value quoted in the message
        comes from the ESP or a cloud-config and must not add a line of its own."""
        from bootkeeper.shown import shown_line

        where = f"{self.file}:{self.line}" if self.line else self.file
        first = shown_line(f"{where}: {self.severity.value} {self.code}: {self.message}")
        return f"{first}\n    fix: {shown_line(self.fix)}"
