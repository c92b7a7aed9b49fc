"""What one group sync changed and what it had to skip, and the summary people read
(the command's output, the task's counts, the admin's sync history).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from accounts.ldap.client import BrokenEntry

#: How many names `str(SyncReport)` lists per kind of change before "and N more".
NAMES_SHOWN = 20


@dataclass(frozen=True)
class MembershipChange:
    username: str
    course: str
    role: str

    def __str__(self) -> str:
        return f"{self.username} in {self.course} as {self.role}"


@dataclass
class SyncReport:
    """What one group sync changed, and what it had to skip."""

    created_users: list[str] = field(default_factory=list)
    updated_users: list[str] = field(default_factory=list)
    role_changes: list[str] = field(default_factory=list)
    reactivated_users: list[str] = field(default_factory=list)
    disabled_users: list[str] = field(default_factory=list)
    created_courses: list[str] = field(default_factory=list)
    added_memberships: list[MembershipChange] = field(default_factory=list)
    changed_memberships: list[MembershipChange] = field(default_factory=list)
    removed_memberships: list[MembershipChange] = field(default_factory=list)
    skipped: list[BrokenEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    #: (attribute, singular, plural) of every kind of change, in the summary's order.
    CHANGES = (
        ("created_users", "person created", "people created"),
        ("updated_users", "person updated", "people updated"),
        ("role_changes", "role changed", "roles changed"),
        ("reactivated_users", "person enabled again", "people enabled again"),
        ("disabled_users", "person disabled", "people disabled"),
        ("created_courses", "course created", "courses created"),
        ("added_memberships", "membership added", "memberships added"),
        ("changed_memberships", "membership changed", "memberships changed"),
        ("removed_memberships", "membership removed", "memberships removed"),
    )

    def counts(self) -> dict[str, int]:
        counts = {name: len(getattr(self, name)) for name, *_labels in self.CHANGES}
        return counts | {"skipped": len(self.skipped), "warnings": len(self.warnings)}

    @property
    def change_count(self) -> int:
        return sum(len(getattr(self, name)) for name, *_labels in self.CHANGES)

    @property
    def has_changes(self) -> bool:
        return self.change_count > 0

    def __str__(self) -> str:
        title = "LDAP group sync (dry run, nothing saved)" if self.dry_run else "LDAP group sync"
        done = [
            f"{len(items)} {singular if len(items) == 1 else plural}"
            for name, singular, plural in self.CHANGES
            if (items := getattr(self, name))
        ]
        line = f"{title}: {', '.join(done) if done else 'no changes'}"
        if self.skipped:
            line += f"; {len(self.skipped)} {'entry' if len(self.skipped) == 1 else 'entries'}"
            line += " skipped"
        lines = [f"{line} ({self.seconds:.2f} s)."]
        if self.disabled_users:
            lines.append(
                "Disabled, not deleted (they left the directory or every synced group; "
                "desktops kept): " + shorten(self.disabled_users)
            )
        for name, _singular, plural in self.CHANGES:
            if name != "disabled_users" and (items := getattr(self, name)):
                lines.append(f"{plural.capitalize()}: {shorten(items)}")
        lines.extend(f"Skipped {entry}" for entry in self.skipped)
        lines.extend(f"Warning: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def shorten(items: Sequence[object]) -> str:
    shown = ", ".join(str(item) for item in items[:NAMES_SHOWN])
    hidden = len(items) - NAMES_SHOWN
    return f"{shown} and {hidden} more" if hidden > 0 else shown
