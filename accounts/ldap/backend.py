"""Signing in with a directory: `IsardLDAPBackend`, django-auth-ldap configured from the
`ISARD_LDAP_*` settings and the schools' own directories.

It binds as the person to check the password, copies names and e-mail, sets the role
from the role groups (the highest wins) and refuses disabled accounts. When the
directory does not answer within `ISARD_LDAP_TIMEOUT` it logs why, marks the request
(`directory_unreachable`) so that the sign-in says so rather than "wrong password", and
lets the next backend (local accounts) try.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from django.dispatch import receiver
from django.http import HttpRequest
from django_auth_ldap.backend import LDAPBackend, ldap_error, populate_user

from accounts.choices import CourseRole, MembershipSource, Role
from accounts.ldap.client import UNREACHABLE_ERRORS, describe_ldap_error
from accounts.ldap.config import LdapConfig, at_least, highest_role
from accounts.ldap.people import ldap_account_link
from accounts.models import CourseMembership, LdapAccount, School, SchoolDirectory, User
from isard.core.errors import ApplicationError

logger = logging.getLogger(__name__)


#: The directory a login is trying now, for the error log (django-auth-ldap's signals do
#: not say which backend instance sent them).
current_config: ContextVar[LdapConfig | None] = ContextVar("current_ldap_config", default=None)


#: The attribute set on a request whose sign-in could not reach a directory.
UNREACHABLE_MARK = "isard_directory_unreachable"


DIRECTORY_UNREACHABLE_MESSAGE = (
    "The school's directory cannot be reached right now, so school accounts cannot sign "
    "in. Try again in a few minutes; if it lasts, tell your school's administrator."
)


class DirectoryUnavailableError(ApplicationError):
    """A sign-in failed while a directory it needed did not answer: not a wrong password.

    Said whatever the username, so that it tells nobody which names exist.
    """

    status_code = 503


def directory_unreachable(request: HttpRequest | None) -> bool:
    """Whether a directory did not answer during this request's sign-in."""
    return bool(getattr(request, UNREACHABLE_MARK, False))


def school_directory_configs() -> list[LdapConfig]:
    """Every enabled school directory, as configurations."""
    return [
        LdapConfig.from_directory(directory)
        for directory in SchoolDirectory.objects.filter(enabled=True)
        .select_related("school")
        .order_by("pk")
    ]


def login_configs(username: str) -> list[LdapConfig]:
    """The directories that may sign `username` in, in order.

    Someone already linked to a directory signs in with that one only, and someone of a
    school with its own directory with that one: a name in two directories never
    reaches the wrong person. A new name tries the platform's directory, then each
    school's; the first that knows the name and password makes the person.
    """
    platform = LdapConfig.from_settings()
    user = (
        User.objects.filter(username__iexact=username).select_related("school__directory").first()
    )
    if user is not None:
        account = LdapAccount.objects.filter(user=user).select_related("directory__school")
        linked = account.first()
        if linked is not None:
            if linked.directory is None:
                return [platform] if platform.enabled else []
            config = LdapConfig.from_directory(linked.directory)
            return [config] if config.enabled else []
        school_directory = getattr(user.school, "directory", None) if user.school else None
        if school_directory is not None and school_directory.enabled:
            return [LdapConfig.from_directory(school_directory)]
        return [platform] if platform.enabled else []
    return [config for config in (platform, *school_directory_configs()) if config.enabled]


class IsardLDAPBackend(LDAPBackend):
    """django-auth-ldap, configured from the `ISARD_LDAP_*` settings and the schools' own
    directories (`SchoolDirectory`).

    Django makes a new backend for every login, and django-auth-ldap reads its settings
    when first asked, so each login sees the current settings. `AUTH_LDAP_*` settings
    still override single values. For each directory `login_configs` allows, the backend
    switches its configuration and tries; the first that signs the person in wins.
    """

    _config: LdapConfig | None = None

    @property
    def config(self) -> LdapConfig:
        if self._config is None:
            self._config = LdapConfig.from_settings()
        return self._config

    @property
    def default_settings(self) -> dict[str, Any]:
        return self.config.auth_ldap_settings()

    def authenticate(
        self,
        request: Any,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if not username or not password:
            return None
        for config in login_configs(username):
            self._config = config
            self._settings = None  # django-auth-ldap builds them again from this config
            token = current_config.set(config)
            try:
                user = super().authenticate(request, username=username, password=password, **kwargs)
            finally:
                current_config.reset(token)
            if user is not None:
                return user
        return None

    def authenticate_ldap_user(self, ldap_user: Any, password: str) -> User | None:
        user: User | None = super().authenticate_ldap_user(ldap_user, password)
        if user is None:
            return None
        if not user.is_active:
            # django-auth-ldap does not check this itself.
            logger.info("refused the directory login of %s: the account is disabled", user)
            return None
        ldap_account_link(user=user, dn=ldap_user.dn, directory_id=self.config.directory_id)
        return user


@receiver(populate_user, sender=IsardLDAPBackend)
def apply_directory_role(sender: Any, user: User, ldap_user: Any, **kwargs: Any) -> None:
    """Before the user is saved at login: role from the role groups, school if none.

    Someone the group sync made a course's teacher (a teachers' group, naming rule or
    attribute) stays a teacher at least, as the sync leaves them.
    """
    config: LdapConfig = ldap_user.backend.config
    if config.role_groups:
        if config.group_search_base:
            user.role = highest_role(ldap_user.group_dns, config.role_groups)
            teaches = user.pk is not None and (
                CourseMembership.objects.filter(
                    user=user, role=CourseRole.TEACHER, source=MembershipSource.DIRECTORY
                ).exists()
            )
            if teaches:
                user.role = at_least(user.role, Role.TEACHER)
        else:
            logger.error(
                "ISARD_LDAP_ROLE_GROUPS is set but ISARD_LDAP_GROUP_SEARCH_BASE is empty: "
                "the role of %s was left as %s",
                user.username,
                user.role,
            )
    if user.school_id is None and config.school_slug:
        user.school = School.objects.filter(slug=config.school_slug).first()


@receiver(ldap_error, sender=IsardLDAPBackend)
def log_directory_error(
    sender: Any, context: str, user: Any, request: Any, exception: Exception, **kwargs: Any
) -> None:
    config = current_config.get() or LdapConfig.from_settings()
    uri = config.server_uri
    if isinstance(exception, UNREACHABLE_ERRORS):
        if request is not None:
            setattr(request, UNREACHABLE_MARK, True)
        logger.error(
            "The LDAP directory %s is unreachable (%s) while %s; trying local accounts.",
            uri,
            describe_ldap_error(exception),
            context,
        )
    else:
        logger.error(
            "The LDAP directory %s answered with an error while %s: %s",
            uri,
            context,
            describe_ldap_error(exception),
        )
