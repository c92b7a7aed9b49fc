"""Enrolment codes: a course's code per role, which people type to join the course, or
to sign up in its school with a new local account.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.choices import CourseRole, MembershipSource, Role
from accounts.models import (
    Course,
    CourseMembership,
    EnrolmentCode,
    User,
)
from accounts.permissions import can_manage_course
from isard.core.errors import ApplicationError, ConflictError, NotFoundError, PermissionDeniedError

logger = logging.getLogger(__name__)


#: Letters and digits that cannot be mistaken for one another when read aloud or copied.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


CODE_LENGTH = 8


def normalize_code(code: str) -> str:
    """What people type ("abcd-efgh ", "ABCDEFGH") to the stored form ("ABCDEFGH")."""
    return "".join(character for character in code.upper() if character.isalnum())


def format_code(code: str) -> str:
    """The code as shown to people: two groups of four."""
    return f"{code[:4]}-{code[4:]}" if len(code) == CODE_LENGTH else code


def _new_code() -> str:
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        if not EnrolmentCode.objects.filter(code=code).exists():
            return code


def _check_course_teacher(actor: User, course: Course) -> None:
    if not can_manage_course(actor, course):
        raise PermissionDeniedError(f"Only the teachers of “{course.name}” can change its codes.")


def enrolment_code_regenerate(*, actor: User, course: Course, role: CourseRole) -> EnrolmentCode:
    """Give the course a new code for `role` (enabled); the previous one stops working."""
    _check_course_teacher(actor, course)
    role = CourseRole(role)
    with transaction.atomic():
        code, _created = EnrolmentCode.objects.update_or_create(
            course=course,
            role=role,
            defaults={"code": _new_code(), "enabled": True, "updated_by": actor},
        )
    logger.info("%s regenerated the %s code of %s", actor, role, course)
    return code


def enrolment_code_disable(*, actor: User, course: Course, role: CourseRole) -> None:
    """Refuse the course's code for `role` until it is regenerated."""
    _check_course_teacher(actor, course)
    EnrolmentCode.objects.filter(course=course, role=CourseRole(role)).update(
        enabled=False, updated_by=actor, updated_at=timezone.now()
    )
    logger.info("%s disabled the %s code of %s", actor, role, course)


def enrolment_code_find(code: str) -> EnrolmentCode:
    """The enabled code people typed, or an error that tells them what to do."""
    normalized = normalize_code(code)
    if not normalized:
        raise ApplicationError("Type the course code your teacher gave you.")
    found = EnrolmentCode.objects.select_related("course__school").filter(code=normalized).first()
    if found is None:
        raise NotFoundError(
            f"The code “{code.strip()}” is not valid: check it, or ask your teacher for the "
            "current one (a regenerated code replaces the old one)."
        )
    if not found.enabled:
        raise ConflictError(
            f"The code for “{found.course.name}” has been disabled; ask your teacher for a new one."
        )
    return found


@dataclass(frozen=True)
class Enrolment:
    """What joining with a code did."""

    course: Course
    role: CourseRole
    changed: bool

    def __str__(self) -> str:
        role = self.role.label.lower()
        if not self.changed:
            return f"You are already in “{self.course.name}” as a {role}."
        return f"You joined “{self.course.name}” as a {role}."


def course_join_with_code(*, user: User, code: str) -> Enrolment:
    """Put `user` in the code's course with the code's role.

    A teacher code makes a student a teacher (of this course, and a teacher overall);
    a student code never lowers a teacher. A person of another school is refused, so that
    a code cannot carry anyone across schools. The membership's source is "code", so the
    LDAP group sync leaves it alone.
    """
    found = enrolment_code_find(code)
    course = found.course
    role = CourseRole(found.role)
    if user.school_id not in (None, course.school_id) and not user.is_admin:
        raise PermissionDeniedError(
            f"The code is for a course of another school (“{course.school.name}”)."
        )
    with transaction.atomic():
        changed_fields = []
        if user.school_id is None and not user.is_admin:
            user.school = course.school
            changed_fields.append("school")
        if role == CourseRole.TEACHER and user.role == Role.STUDENT:
            user.role = Role.TEACHER
            changed_fields.append("role")
        if changed_fields:
            user.save(update_fields=changed_fields)
        membership, created = CourseMembership.objects.get_or_create(
            course=course, user=user, defaults={"role": role, "source": MembershipSource.CODE}
        )
        changed = created
        if not created and membership.role == CourseRole.STUDENT and role == CourseRole.TEACHER:
            # The code now gives this role, not the directory: the group sync must not
            # lower it or take it away.
            membership.role = role
            membership.source = MembershipSource.CODE
            membership.save(update_fields=["role", "source"])
            changed = True
    final_role = CourseRole(membership.role)
    if changed:
        logger.info("%s joined %s as %s with a code", user, course, final_role)
    return Enrolment(course=course, role=final_role, changed=changed)


def user_signup_with_code(
    *,
    code: str,
    username: str,
    password: str,
    first_name: str = "",
    last_name: str = "",
    email: str = "",
) -> tuple[User, Enrolment]:
    """A new local account, in the code's school and course with the code's role."""
    found = enrolment_code_find(code)
    school = found.course.school
    if not school.local_accounts:
        raise PermissionDeniedError(
            f"“{school.name}” signs its people in with its directory: sign in with your "
            "school account and give the code there."
        )
    username = username.strip()
    if not username:
        raise ApplicationError("Choose a username.")
    if User.objects.filter(username__iexact=username).exists():
        raise ConflictError(f"The username “{username}” is taken; choose another.")
    role = Role.TEACHER if found.role == CourseRole.TEACHER else Role.STUDENT
    user = User(
        username=username,
        first_name=first_name.strip(),
        last_name=last_name.strip(),
        email=email.strip(),
        role=role,
        school=found.course.school,
    )
    try:
        validate_password(password, user)
    except ValidationError as error:
        raise ApplicationError(" ".join(error.messages), extra={"field": "password"}) from error
    user.set_password(password)
    with transaction.atomic():
        user.save()
        enrolment = course_join_with_code(user=user, code=found.code)
    return user, enrolment
