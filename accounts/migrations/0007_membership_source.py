"""Where each course membership came from (`CourseMembership.source`).

Existing rows cannot say who made them. They become "manual", except the memberships of
directory people (an `LdapAccount`) in courses a group mapping feeds: those are exactly
the ones the group sync managed until now (it removed any of them the groups did not
list), so they become "directory" and the sync goes on treating them the same way. A
membership such a person got with a code before this migration is therefore still
removed by the next sync if the directory does not list it; one given after it is not.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def mark_directory_memberships(apps: Any, schema_editor: Any) -> None:
    CourseMembership = apps.get_model("accounts", "CourseMembership")
    LdapGroupMapping = apps.get_model("accounts", "LdapGroupMapping")
    fed_courses = LdapGroupMapping.objects.filter(course__isnull=False).values("course_id")
    CourseMembership.objects.filter(
        course_id__in=fed_courses, user__ldap_account__isnull=False
    ).update(source="directory")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_names_without_control_characters"),
    ]

    operations = [
        migrations.AddField(
            model_name="coursemembership",
            name="source",
            field=models.CharField(
                choices=[
                    ("directory", "Directory (group sync)"),
                    ("code", "Enrolment code"),
                    ("manual", "By hand"),
                ],
                default="manual",
                max_length=16,
            ),
        ),
        migrations.RunPython(mark_directory_memberships, migrations.RunPython.noop),
    ]
