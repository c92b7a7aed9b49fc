"""The migration that gives memberships a source marks those the group sync managed."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("accounts", "0006_names_without_control_characters")]
AFTER = [("accounts", "0007_membership_source")]


@pytest.mark.django_db(transaction=True)
def test_existing_memberships_of_directory_people_in_fed_courses_become_directory() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    apps = executor.loader.project_state(BEFORE).apps
    School = apps.get_model("accounts", "School")
    Course = apps.get_model("accounts", "Course")
    User = apps.get_model("accounts", "User")
    LdapAccount = apps.get_model("accounts", "LdapAccount")
    LdapGroupMapping = apps.get_model("accounts", "LdapGroupMapping")
    CourseMembership = apps.get_model("accounts", "CourseMembership")
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
        CourseMembership.objects.create(user=user, course=course)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    apps = executor.loader.project_state(AFTER).apps
    rows = apps.get_model("accounts", "CourseMembership").objects.values_list(
        "user__username", "course__name", "source"
    )
    sources = {(username, course): source for username, course, source in rows}

    assert sources == {
        ("alice", "Maths"): "directory",
        ("alice", "Art"): "manual",
        ("localhelper", "Maths"): "manual",
    }
    MigrationExecutor(connection).migrate(executor.loader.graph.leaf_nodes())
