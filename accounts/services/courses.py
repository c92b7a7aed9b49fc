"""A course's settings that its teachers choose: resets by students, the time limit."""

from __future__ import annotations

from accounts.models import Course, User
from accounts.permissions import can_manage_course
from isard.core.errors import ApplicationError, NotFoundError

#: Each number a teacher sets, and its bounds (the model's validators say the same).
SESSION_BOUNDS: dict[str, tuple[int, int]] = {
    "session_limit_minutes": (0, 24 * 60),
    "session_warning_minutes": (0, 120),
    "session_extensions": (0, 20),
    "session_extension_minutes": (1, 24 * 60),
    "idle_shutdown_minutes": (0, 24 * 60),
}


def course_set_students_may_reset(*, actor: User, course: Course, allowed: bool) -> Course:
    """Whether the course's students may put their own desktops back to the template."""
    return course_update_settings(actor=actor, course=course, students_may_reset=allowed)


def course_update_settings(
    *, actor: User, course: Course, students_may_reset: bool | None = None, **numbers: int
) -> Course:
    """Change the course's settings; a number out of its bounds is refused, naming it, and
    nothing is changed. New time limits apply to sessions that start afterwards."""
    if not can_manage_course(actor, course):
        raise NotFoundError("No such course.")
    fields: dict[str, int | bool] = {}
    for name, value in numbers.items():
        low, high = SESSION_BOUNDS[name]
        if not low <= value <= high:
            message = f"Between {low} and {high}."
            raise ApplicationError(f"“{name}”: {message}", extra={"fields": {name: [message]}})
        fields[name] = value
    if students_may_reset is not None:
        fields["students_may_reset"] = students_may_reset
    if fields:
        Course.objects.filter(pk=course.pk).update(**fields)
        for name, value in fields.items():
            setattr(course, name, value)
    return course
