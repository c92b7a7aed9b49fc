"""A course's settings that its teachers choose: resets by students, the time limit."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from accounts.models import Course, User
from accounts.permissions import can_manage_course
from isard.core.errors import ApplicationError, NotFoundError

#: The numbers a teacher sets; their bounds are the model fields' validators.
SESSION_NUMBERS = (
    "session_limit_minutes",
    "session_warning_minutes",
    "session_extensions",
    "session_extension_minutes",
    "idle_shutdown_minutes",
)


def course_update_settings(
    *, actor: User, course: Course, students_may_reset: bool | None = None, **numbers: int
) -> Course:
    """Change the course's settings; a number out of its bounds is refused, naming it, and
    nothing is changed. New time limits apply to sessions that start afterwards."""
    if not can_manage_course(actor, course):
        raise NotFoundError("No such course.")
    fields: dict[str, int | bool] = {}
    for name, value in numbers.items():
        if name not in SESSION_NUMBERS:
            raise ApplicationError(f"“{name}” is not a course setting.")
        try:
            field = Course._meta.get_field(name)
            assert isinstance(field, models.Field)
            field.clean(value, course)
        except ValidationError as error:
            messages = list(error.messages)
            raise ApplicationError(
                f"“{name}”: {' '.join(messages)}", extra={"fields": {name: messages}}
            ) from error
        fields[name] = value
    if students_may_reset is not None:
        fields["students_may_reset"] = students_may_reset
    if fields:
        Course.objects.filter(pk=course.pk).update(**fields)
        for name, value in fields.items():
            setattr(course, name, value)
    return course
