"""The migration that gives memberships a source marks those the group sync managed.

Its data step runs on today's models: migrating the test database back and forth inside
a test left PostgreSQL locked for the tests after it.
"""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from accounts.models import Course, CourseMembership, LdapAccount, LdapGroupMapping, School, User

migration = importlib.import_module("accounts.migrations.0007_membership_source")


@pytest.mark.django_db
def test_existing_memberships_of_directory_people_in_fed_courses_become_directory() -> None:
    school = School.objects.create(name="North", slug="north")
    fed = Course.objects.create(school=school, name="Maths")
    unfed = Course.objects.create(school=school, name="Art")
    LdapGroupMapping.objects.create(
        group_dn="cn=maths,ou=groups,dc=school,dc=test", school=school, course=fed
    )
    directory_person = User.objects.create(username="alice")
    LdapAccount.objects.create(user=directory_person, dn="uid=alice,dc=school,dc=test")
    local = User.objects.create(username="localhelper")
    for user, course in [(directory_person, fed), (directory_person, unfed), (local, fed)]:
        CourseMembership.objects.create(user=user, course=course, source="manual")

    migration.mark_directory_memberships(apps, None)

    rows = CourseMembership.objects.values_list("user__username", "course__name", "source")
    assert {(username, course): source for username, course, source in rows} == {
        ("alice", "Maths"): "directory",
        ("alice", "Art"): "manual",
        ("localhelper", "Maths"): "manual",
    }
