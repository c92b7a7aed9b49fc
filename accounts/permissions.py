"""Who may see and act on what: the one policy, shared by services, the API and the admin.

Roles (see `accounts.choices.Role`):

- admin: everything, in every school;
- manager: everything inside their own school (its people, courses, desktops and
  templates) and a read-only view of the hypervisors;
- teacher: their own desktops and templates, and the courses they teach (a course
  membership with the teacher role), including the desktops of those courses, so that a
  teacher can start, stop or recreate a class's desktops;
- student: their own desktops, and templates shared with them.

The Django admin follows the same rules (`admin_role`, `accounts.admin_scope`): admins,
managers and teachers use it, each seeing only the rows above; students never do.

Each rule is written once as a `Q` over the model, so a list (`*_visible_to`) and a
single check (`can_*`) can never disagree. Objects a user may not see are reported as
"not found" by callers, so that ids of other people's objects leak nothing.
"""

from __future__ import annotations

from typing import Literal

from django.db.models import Q, QuerySet

from accounts.choices import CourseRole, Role
from accounts.models import Course, CourseMembership, Quota, School, User


def is_manager(actor: User) -> bool:
    return actor.role == Role.MANAGER and actor.school_id is not None and not actor.is_admin


def _own_school(actor: User) -> int:
    """The manager's school id; `is_manager` has checked that there is one."""
    assert actor.school_id is not None
    return actor.school_id


def manages_school(actor: User, school_id: int | None) -> bool:
    """A manager acts on their own school only; an admin on every school."""
    if actor.is_admin:
        return True
    return is_manager(actor) and school_id is not None and actor.school_id == school_id


# --- courses -----------------------------------------------------------------------------


def _taught_courses_q(actor: User) -> Q:
    # A subquery, not a join on memberships: a caller that then counts a course's
    # memberships (its students) would reuse that join and count the teacher's row only.
    return Q(
        pk__in=CourseMembership.objects.filter(user=actor, role=CourseRole.TEACHER).values(
            "course_id"
        )
    )


def courses_visible_to(actor: User) -> QuerySet[Course]:
    """Courses the person may see: their own, or every course of a school they manage."""
    courses = Course.objects.all()
    if actor.is_admin:
        return courses
    if is_manager(actor):
        return courses.filter(school_id=_own_school(actor))
    return courses.filter(memberships__user=actor).distinct()


def courses_taught_by(actor: User) -> QuerySet[Course]:
    """Courses the person may manage: deploy to, enrol into, regenerate codes of."""
    courses = Course.objects.all()
    if actor.is_admin:
        return courses
    if is_manager(actor):
        return courses.filter(school_id=_own_school(actor))
    if actor.role == Role.STUDENT:
        return courses.none()
    return courses.filter(_taught_courses_q(actor)).distinct()


def can_manage_course(actor: User, course: Course) -> bool:
    return courses_taught_by(actor).filter(pk=course.pk).exists()


# --- people --------------------------------------------------------------------------------


def users_visible_to(actor: User) -> QuerySet[User]:
    """People the person may see: themselves, their school (managers), their students."""
    users = User.objects.all()
    if actor.is_admin:
        return users
    if is_manager(actor):
        return users.filter(school_id=_own_school(actor))
    if actor.role == Role.STUDENT:
        return users.filter(pk=actor.pk)
    taught = courses_taught_by(actor)
    return users.filter(Q(pk=actor.pk) | Q(memberships__course__in=taught)).distinct()


def can_manage_user(actor: User, user: User) -> bool:
    """Reset a password, change a role, disable: admins, and managers of the user's school.

    A manager may not act on an admin, nor make anyone an admin (callers check the role
    they set), so a school cannot promote itself out of its tenancy.
    """
    if actor.is_admin:
        return True
    return manages_school(actor, user.school_id) and not user.is_admin


# --- desktops ------------------------------------------------------------------------------


def sees_own_desktops_only(actor: User) -> bool:
    """A student: their own desktops are all they see, less those of hidden deployments."""
    return actor.role == Role.STUDENT and not actor.is_admin and not is_manager(actor)


# --- schools, quotas ----------------------------------------------------------------


def schools_visible_to(actor: User) -> QuerySet[School]:
    """Every school for an admin; their own school for anyone else."""
    schools = School.objects.all()
    if actor.is_admin:
        return schools
    return schools.filter(pk=actor.school_id) if actor.school_id is not None else schools.none()


def _school_quota_q(school_id: int) -> Q:
    return Q(school_id=school_id) | Q(course__school_id=school_id) | Q(user__school_id=school_id)


def quotas_managed_by(actor: User) -> QuerySet[Quota]:
    """Quotas the person may set: all (admins); their school's, its courses' and its
    people's (managers). The defaults per role are the administrators' alone."""
    quotas = Quota.objects.all()
    if actor.is_admin:
        return quotas
    if is_manager(actor):
        return quotas.filter(_school_quota_q(_own_school(actor)))
    return quotas.none()


def can_manage_quota(actor: User, quota: Quota) -> bool:
    """Also for a quota not saved yet: is its scope inside what the person manages?"""
    if actor.is_admin:
        return True
    if not is_manager(actor):
        return False
    school_id = _own_school(actor)
    if quota.user_id is not None:
        return User.objects.filter(
            pk=quota.user_id,
            school_id=school_id,
            role__in=[Role.STUDENT, Role.TEACHER, Role.MANAGER],
        ).exists()
    if quota.course_id is not None:
        return Course.objects.filter(pk=quota.course_id, school_id=school_id).exists()
    return quota.school_id == school_id


def can_assign_role(actor: User, *, role: str, school_id: int | None, superuser: bool) -> bool:
    """May `actor` give someone this role, school and superuser flag? A manager keeps
    everyone inside their school and below administrator."""
    if actor.is_admin:
        return True
    return (
        is_manager(actor)
        and role != Role.ADMIN
        and not superuser
        and school_id is not None
        and school_id == actor.school_id
    )


def is_teacher(actor: User) -> bool:
    """A teacher and nothing more (a manager or an administrator has their own column)."""
    return actor.role == Role.TEACHER and not actor.is_admin


AdminRole = Literal["admin", "manager", "teacher"]


def admin_role(actor: User) -> AdminRole | None:
    """Which column of the admin's rules applies to the person; None: they may not use it.

    The role decides, not `is_staff`: a teacher or manager made by the directory (who has
    no `is_staff`) signs in to the admin like one made by hand, and a student stays out
    even with `is_staff` set by mistake.
    """
    if not actor.is_active:
        return None
    if actor.is_admin:
        return "admin"
    if is_manager(actor):
        return "manager"
    if is_teacher(actor):
        return "teacher"
    return None


def uses_admin(actor: User) -> bool:
    """The Django admin is for administrators, school managers and teachers (each scoped)."""
    return admin_role(actor) is not None
